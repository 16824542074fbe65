package envoy.authz_test

import data.envoy.authz

pepper := "p3pp3r"

key := "eak_0123456789ab.secretsecretsecretsecret00"

keys := {"0123456789ab": {
	"hash": crypto.hmac.sha256(key, pepper),
	"subject": "bench",
	"roles": ["analyst"],
	"projects": ["vision"],
	"tier": "bench",
	"status": "active",
}}

req(path, auth) := {
	"attributes": {
		"request": {"http": {"method": "POST", "path": path, "headers": {"authorization": auth}}},
		"source": {"address": {"socketAddress": {"address": "127.0.0.1"}}},
	},
	"parsed_path": split(trim_prefix(path, "/"), "/"),
	"parsed_body": {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP64", "data": []}]},
}

test_allows_digits_infer if {
	d := authz.decision with input as req("/v2/models/digits/infer", concat(" ", ["Bearer", key]))
		with data.bench as {"pepper": pepper, "keys": keys}
	d.allowed
	d.headers["x-extauthz-key-id"] == "0123456789ab"
}

test_forbids_other_project if {
	d := authz.decision with input as req("/v2/models/cancer/infer", concat(" ", ["Bearer", key]))
		with data.bench as {"pepper": pepper, "keys": keys}
	not d.allowed
	d.http_status == 403
}

test_wrong_secret_unauthenticated if {
	d := authz.decision with input as req("/v2/models/digits/infer", concat("", ["Bearer ", key, "x"]))
		with data.bench as {"pepper": pepper, "keys": keys}
	d.http_status == 401
}
