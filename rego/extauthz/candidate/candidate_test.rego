package extauthz.candidate_test

import data.extauthz.authz
import data.extauthz.candidate

alice := {"subject": "alice", "roles": ["analyst"], "projects": ["vision"], "tier": "standard", "credential": "api_key"}

infer_batch(n) := {
	"method": "POST", "path": "/v2/models/digits/infer", "model": "digits", "version": "",
	"action": "infer", "source_ip": "127.0.0.1",
	"body": {"valid": true, "batch_size": n, "inputs": 1, "outputs": [], "parameters": []},
}

test_candidate_denies_what_enforced_allows if {
	x := {"request": infer_batch(10), "principal": alice}
	enforced := authz.decision with input as x
	shadow := candidate.decision with input as x
	enforced.allow
	not shadow.allow
	shadow.reason == "batch_too_large"
}

test_candidate_agrees_on_small_batches if {
	x := {"request": infer_batch(8), "principal": alice}
	enforced := authz.decision with input as x
	shadow := candidate.decision with input as x
	enforced == shadow
}
