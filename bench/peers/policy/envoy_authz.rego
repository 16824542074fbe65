# Peer D's policy: extauthz's decision, over opa-envoy-plugin's input document.
#
# Query: data.envoy.authz.decision (opa-envoy-plugin `path: envoy/authz/decision`).
# It authenticates the API key itself, against key records the benchmark writes to
# data.bench.keys (HMAC-SHA256 with data.bench.pepper, as extauthz stores them), and then asks
# the project's own rule, data.extauthz.authz.decision, so both paths decide alike. Quotas are
# enforced by Envoy's rate-limit filter → envoyproxy/ratelimit, keyed on x-extauthz-key-id.
package envoy.authz

http := input.attributes.request.http

bearer := trim_prefix(http.headers.authorization, "Bearer ")

# eak_<12 hex id>.<secret>
key_id := substring(bearer, 4, 12) if startswith(bearer, "eak_")

record := data.bench.keys[key_id]

authenticated if {
	record.status == "active"
	crypto.hmac.equal(crypto.hmac.sha256(bearer, data.bench.pepper), record.hash)
}

# V2 Open Inference Protocol route, as extauthz/request.py parses it.
segments := input.parsed_path

model_name := segments[2] if {
	segments[0] == "v2"
	segments[1] == "models"
}

default version := ""

version := segments[4] if segments[3] == "versions"

verb := segments[count(segments) - 1]

default action := ""

action := "infer" if {
	verb == "infer"
	http.method == "POST"
}

action := "ready" if {
	verb == "ready"
	http.method == "GET"
}

action := "metadata" if {
	not verb in {"infer", "ready"}
	http.method == "GET"
}

# What the V2 inference body asks for, as extauthz/policy/input.py's body_facts() computes it
# (opa-envoy-plugin parses a JSON body into input.parsed_body).
no_body := {
	"valid": true,
	"reason": "ok",
	"content_type": "",
	"batch_size": 0,
	"features": 0,
	"inputs": 0,
	"datatypes": [],
	"outputs": [],
	"parameters": [],
	"output_parameters": [],
}

# the peer reads the default (numpy) codec only; anything else is invalid, as extauthz refuses
# what it cannot read unambiguously (its reason codes are finer; the bench sends valid bodies)
bad_body := object.union(no_body, {"valid": false, "reason": "bad_body"})

doc := input.parsed_body

tensors := doc.inputs if {
	is_array(doc.inputs)
	count(doc.inputs) > 0
}

valid_shapes if {
	every tensor in tensors {
		is_array(tensor.shape)
		every d in tensor.shape {
			is_number(d)
			d >= 0
			d == floor(d)
		}
	}
}

first_dim(shape) := shape[0] if count(shape) > 0

first_dim(shape) := 1 if count(shape) == 0

batch := max([first_dim(tensor.shape) | some tensor in tensors])

requested_outputs := sort({sprintf("%v", [o.name]) | some o in object.get(doc, "outputs", [])})

# values per row over all inputs: the sum of product(shape[1:])
width(shape) := product(array.slice(shape, 1, count(shape))) if count(shape) > 1
width(shape) := 1 if count(shape) <= 1
features := sum([width(tensor.shape) | some tensor in tensors])
datatypes := sort({t.datatype | some t in tensors})
output_parameters := sort({k | some o in object.get(doc, "outputs", []); some k, _ in object.get(o, "parameters", {})})

parameters := object.get(doc, "parameters", {})

body_facts := no_body if {
	action != "infer"
} else := {
	"valid": true,
	"reason": "ok",
	"content_type": "",
	"batch_size": batch,
	"features": features,
	"inputs": count(tensors),
	"datatypes": datatypes,
	"outputs": requested_outputs,
	"parameters": sort(object.keys(parameters)),
	"output_parameters": output_parameters,
} if {
	valid_shapes
	is_object(parameters)
	not parameters.content_type
} else := bad_body

policy_input := {
	"schema_version": 1,
	"request": {
		"method": http.method,
		"path": http.path,
		"model": model_name,
		"version": version,
		"action": action,
		"source_ip": input.attributes.source.address.socketAddress.address,
		"body": body_facts,
	},
	"principal": {
		"subject": record.subject,
		"roles": record.roles,
		"projects": record.projects,
		"tier": record.tier,
		"credential": "api_key",
	},
	# an API key proves no device (extauthz: Device trust "none")
	"device": {"trust": "none", "thumbprint": ""},
}

policy := d if {
	d := data.extauthz.authz.decision with input as policy_input
}

default decision := {
	"allowed": false,
	"http_status": 401,
	"body": "{\"error\":\"unauthenticated\"}",
	"headers": {"content-type": "application/json"},
}

decision := {
	"allowed": true,
	"headers": {
		"x-extauthz-subject": record.subject,
		"x-extauthz-key-id": key_id,
		"x-extauthz-tier": record.tier,
	},
	"request_headers_to_remove": ["authorization", "x-api-key"],
} if {
	authenticated
	policy.allow
}

decision := {
	"allowed": false,
	"http_status": 403,
	"body": "{\"error\":\"forbidden\"}",
	"headers": {"content-type": "application/json"},
} if {
	authenticated
	not policy.allow
}
