package extauthz.authz_test

import data.extauthz.authz

# ---------------------------------------------------------------------------
# Who may do what.
#
# Each row: principal, request, expected decision. `opa test -v` reports
# every row by name as a sub-test of test_who_may_do_what.
# ---------------------------------------------------------------------------

who_may_do_what := {
	# alice: analyst on the vision project
	"alice infers digits": [alice, infer("digits"), allowed("standard")],
	"alice reads digits metadata": [alice, metadata("digits"), allowed("standard")],
	"alice checks digits readiness": [alice, ready("digits"), allowed("standard")],
	"alice infers digits version v1": [alice, infer_version("digits", "v1"), allowed("standard")],
	"alice infers digits version v2 (a canary for vision-beta only)": [alice, infer_version("digits", "v2"), denied("version_not_allowed")],
	"alice infers digits version 2 (no such version)": [alice, infer_version("digits", "2"), denied("version_not_allowed")],
	"bea (vision-beta) infers digits version v2": [bea, infer_version("digits", "v2"), allowed("standard")],
	"alice infers iris version 7 (unversioned models: as asked)": [alice, infer_version("iris", "7"), allowed_shaped("standard", {"cache": "tenant"})],
	"alice infers cancer": [alice, infer("cancer"), denied("project_mismatch")],
	"alice infers echo": [alice, infer("echo"), denied("project_mismatch")],
	# bob: clinician on the clinical project (cancer responses carry shaping hints)
	"bob infers cancer": [bob, infer("cancer"), allowed_shaped("standard", {"round": 2, "max_classes": 1})],
	# diabetes is restricted: only a DPoP-bound JWT from a managed (or attested) device
	"bob infers diabetes with his API key": [bob, infer("diabetes"), denied("insufficient_assurance")],
	"bob reads diabetes metadata with his API key": [bob, metadata("diabetes"), denied("insufficient_assurance")],
	"bob infers diabetes with a plain JWT": [with_jwt(bob), infer("diabetes"), denied("insufficient_assurance")],
	"bob infers diabetes with JWT+DPoP, device not enrolled": [with_dpop(bob, "none"), infer("diabetes"), denied("insufficient_assurance")],
	"bob infers diabetes with JWT+DPoP from a registered device": [with_dpop(bob, "registered"), infer("diabetes"), denied("insufficient_assurance")],
	"bob infers diabetes with JWT+DPoP from a managed device": [with_dpop(bob, "managed"), infer("diabetes"), allowed_shaped("standard", {"round": 1})],
	"bob reads diabetes metadata with JWT+DPoP from a managed device": [with_dpop(bob, "managed"), metadata("diabetes"), allowed_shaped("standard", {"round": 1})],
	"bob infers diabetes with JWT+DPoP from an attested device": [with_dpop(bob, "attested"), infer("diabetes"), allowed_shaped("standard", {"round": 1})],
	"bob infers diabetes with an API key claiming a managed device": [with_device(bob, "managed"), infer("diabetes"), denied("insufficient_assurance")],
	"bob infers diabetes with JWT+DPoP, unknown trust label": [with_dpop(bob, "root"), infer("diabetes"), denied("insufficient_assurance")],
	"bob infers cancer (confidential) with a plain JWT": [with_jwt(bob), infer("cancer"), allowed_shaped("standard", {"round": 2, "max_classes": 1})],
	"bob infers cancer with JWT+DPoP, device not enrolled": [with_dpop(bob, "none"), infer("cancer"), allowed_shaped("standard", {"round": 2, "max_classes": 1})],
	"bob infers digits": [bob, infer("digits"), denied("project_mismatch")],
	# victor: viewer on the vision project
	"victor infers digits": [victor, infer("digits"), denied("role_not_permitted")],
	"victor reads digits metadata": [victor, metadata("digits"), allowed("standard")],
	"victor checks digits readiness": [victor, ready("digits"), allowed("standard")],
	# carol: analyst on clinical; analysts stop at internal, cancer is confidential
	"carol infers cancer": [carol, infer("cancer"), denied("role_not_permitted")],
	"carol reads cancer metadata": [carol, metadata("cancer"), denied("role_not_permitted")],
	# olga: operator on ops, trial tier
	"olga infers echo": [olga, infer("echo"), allowed("trial")],
	# ada: admin on every project, bench tier
	"ada infers diabetes with her API key": [ada, infer("diabetes"), denied("insufficient_assurance")],
	"ada infers diabetes with JWT+DPoP from a managed device": [with_dpop(ada, "managed"), infer("diabetes"), allowed_shaped("bench", {"round": 1})],
	"ada infers diabetes as an mTLS service identity": [with_mtls(ada), infer("diabetes"), denied("insufficient_assurance")],
	"olga infers echo as an mTLS service identity": [with_mtls(olga), infer("echo"), allowed("trial")],
	"alice infers digits with a plain JWT": [with_jwt(alice), infer("digits"), allowed("standard")],
	"alice (role analyst) infers diabetes with JWT+DPoP from a managed device": [with_dpop(alice, "managed"), infer("diabetes"), denied("project_mismatch")],
	"dora (viewer+clinician) infers diabetes with JWT+DPoP, managed": [with_dpop(dora, "managed"), infer("diabetes"), allowed_shaped("standard", {"round": 1})],
	"ada infers digits": [ada, infer("digits"), allowed("bench")],
	# multiple roles: any one permitting role is enough
	"dora (viewer+clinician) infers cancer": [dora, infer("cancer"), allowed_shaped("standard", {"round": 2, "max_classes": 1})],
	# unknown models and non-model routes
	"alice infers an unknown model": [alice, infer("mnist"), denied("unknown_model")],
	"alice calls a non-model path": [alice, non_model_route, denied("unknown_model")],
	"ada calls a non-model path": [ada, non_model_route, denied("unknown_model")],
	"alice sends an action no model lists": [alice, request("POST", "digits", "unload"), denied("action_not_allowed")],
	# tiers
	"mallory (unknown tier) infers digits": [mallory, infer("digits"), denied("unknown_tier")],
	"nemo (no tier) infers digits": [nemo_without_tier, infer("digits"), denied("unknown_tier")],
	# missing / malformed principal fields never error, they deny
	"rolf (no roles field) infers digits": [rolf_without_roles, infer("digits"), denied("role_not_permitted")],
	"rolf (no roles field) reads digits metadata": [rolf_without_roles, metadata("digits"), denied("role_not_permitted")],
	"sam (roles is a string) infers digits": [sam_roles_string, infer("digits"), denied("role_not_permitted")],
	"pat (no projects field) infers digits": [pat_without_projects, infer("digits"), denied("project_mismatch")],
	"uma (unknown role) infers digits": [uma_unknown_role, infer("digits"), denied("role_not_permitted")],
	# precedence: unknown_model > action_not_allowed > project_mismatch > role_not_permitted > unknown_tier
	"mallory infers an unknown model": [mallory, infer("mnist"), denied("unknown_model")],
	"victor sends an unknown action to cancer": [victor, request("POST", "cancer", "unload"), denied("action_not_allowed")],
	"victor infers cancer": [victor, infer("cancer"), denied("project_mismatch")],
	"mallory reads cancer metadata": [mallory_clinical, metadata("cancer"), denied("role_not_permitted")],
	# public models: any authenticated caller whose role permits the action, any project
	"alice infers iris (public, project demo)": [alice, infer("iris"), allowed_shaped("standard", {"cache": "tenant"})],
	"bob infers iris": [bob, infer("iris"), allowed_shaped("standard", {"cache": "tenant"})],
	"victor infers iris": [victor, infer("iris"), denied("role_not_permitted")],
	# risky requests, read from the parsed V2 body
	"alice infers digits with a malformed body": [alice, infer_with("digits", {"valid": false}), denied("malformed_body")],
	"alice infers digits in a batch of 64": [alice, infer_with("digits", {"batch_size": 64}), allowed("standard")],
	"alice infers digits in a batch of 65": [alice, infer_with("digits", {"batch_size": 65}), denied("batch_too_large")],
	"bob infers cancer in a batch of 17": [bob, infer_with("cancer", {"batch_size": 17}), denied("batch_too_large")],
	"alice asks digits for probabilities": [alice, infer_with("digits", {"outputs": ["predict_proba"]}), allowed("standard")],
	"alice asks digits for labels": [alice, infer_with("digits", {"outputs": ["predict"]}), allowed("standard")],
	"bob asks cancer for probabilities": [bob, infer_with("cancer", {"outputs": ["predict", "predict_proba"]}), allowed_shaped("standard", {"round": 2, "max_classes": 1})],
	"ada asks cancer for probabilities": [ada, infer_with("cancer", {"outputs": ["predict_proba"]}), allowed_shaped("bench", {"round": 2, "max_classes": 1})],
	"dora (viewer+clinician) asks cancer for probabilities": [dora, infer_with("cancer", {"outputs": ["predict_proba"]}), allowed_shaped("standard", {"round": 2, "max_classes": 1})],
	"alice sends content_type to digits": [alice, infer_with("digits", {"parameters": ["content_type"]}), allowed("standard")],
	"alice sends an unlisted parameter to digits": [alice, infer_with("digits", {"parameters": ["explain"]}), denied("parameter_not_allowed")],
	"olga sends any parameter to echo": [olga, infer_with("echo", {"parameters": ["content_type"]}), denied("parameter_not_allowed")],
	"olga infers echo in a batch of 2": [olga, infer_with("echo", {"batch_size": 2}), denied("batch_too_large")],
	"metadata requests carry no body facts to gate": [alice, metadata("digits"), allowed("standard")],
	# the canonical rows (issue 11): pandas rows, private parameters, shape/data mismatch, depth
	"alice sends digits 65 pandas rows": [alice, infer_with("digits", {"content_type": "pd", "batch_size": 65, "features": 1, "parameters": ["content_type"]}), denied("batch_too_large")],
	"alice sends digits 64 pandas rows": [alice, infer_with("digits", {"content_type": "pd", "batch_size": 64, "features": 1, "parameters": ["content_type"]}), allowed("standard")],
	"alice sends a _decoded_payload": [alice, infer_with("digits", invalid_body("private_parameter")), denied("malformed_body")],
	"alice sends a shape that disagrees with its data": [alice, infer_with("digits", invalid_body("shape_mismatch")), denied("malformed_body")],
	"alice sends 50,000 nested brackets": [alice, infer_with("digits", invalid_body("too_deep")), denied("malformed_body")],
	"alice sends a batch size that is not a number": [alice, infer_with("digits", {"batch_size": "1"}), denied("batch_too_large")],
	"alice asks for an output with an unlisted parameter": [alice, infer_with("digits", {"output_parameters": ["classification"]}), denied("parameter_not_allowed")],
	"alice asks for an output with content_type": [alice, infer_with("digits", {"output_parameters": ["content_type"]}), allowed("standard")],
	"olga asks echo for an output with content_type": [olga, infer_with("echo", {"output_parameters": ["content_type"]}), denied("parameter_not_allowed")],
	"alice sends output_parameters that are not a list": [alice, infer_with("digits", {"output_parameters": "content_type"}), denied("parameter_not_allowed")],
	"bob sends cancer a malformed body and a big batch": [bob, infer_with("cancer", object.union(invalid_body("bad_data"), {"batch_size": 99})), denied("malformed_body")],
	# precedence among the risky checks: malformed > batch > scores > parameters
	"alice sends a big batch asking for an unlisted parameter": [alice, infer_with("digits", {"batch_size": 99, "parameters": ["explain"]}), denied("batch_too_large")],
	"carol (analyst on clinical) asks cancer for a big batch": [carol, infer_with("cancer", {"batch_size": 99}), denied("role_not_permitted")],
	# project networks: clinical only from loopback and 10.20/16
	"bob infers cancer from 10.20.3.4": [bob, from_ip(infer("cancer"), "10.20.3.4"), allowed_shaped("standard", {"round": 2, "max_classes": 1})],
	"bob infers cancer from 192.0.2.10": [bob, from_ip(infer("cancer"), "192.0.2.10"), denied("network_not_allowed")],
	"bob infers cancer from IPv6 loopback": [bob, from_ip(infer("cancer"), "::1"), allowed_shaped("standard", {"round": 2, "max_classes": 1})],
	"bob infers cancer from a garbage address": [bob, from_ip(infer("cancer"), "not-an-ip"), denied("network_not_allowed")],
	"alice infers digits from 192.0.2.10 (vision is not restricted)": [alice, from_ip(infer("digits"), "192.0.2.10"), allowed("standard")],
	"alice infers cancer from 192.0.2.10 (network before project)": [alice, from_ip(infer("cancer"), "192.0.2.10"), denied("network_not_allowed")],
}

test_who_may_do_what[name] if {
	some name, [principal, req, want] in who_may_do_what
	got := authz.decision with input as caller_input(principal, req)
	same(got, want)
}

# A table principal may carry the request's device (see with_dpop); the service sends it as
# the top-level `device`, beside the principal.
caller_input(p, req) := {"request": req, "principal": object.remove(p, ["device"]), "device": p.device}

caller_input(p, req) := {"request": req, "principal": p} if not p.device

# ---------------------------------------------------------------------------
# Principals
# ---------------------------------------------------------------------------

alice := principal("alice", ["analyst"], ["vision"], "standard")

bob := principal("bob", ["clinician"], ["clinical"], "standard")

victor := principal("victor", ["viewer"], ["vision"], "standard")

carol := principal("carol", ["analyst"], ["clinical"], "standard")

olga := principal("olga", ["operator"], ["ops"], "trial")

ada := principal("ada", ["admin"], ["vision", "clinical", "ops"], "bench")

bea := principal("bea", ["analyst"], ["vision", "vision-beta"], "standard")

dora := principal("dora", ["viewer", "clinician"], ["clinical"], "standard")

carla := principal("carla", ["clinician"], ["clinical"], "standard")

mallory := principal("mallory", ["analyst"], ["vision"], "gold")

mallory_clinical := principal("mallory", ["analyst"], ["clinical"], "gold")

uma_unknown_role := principal("uma", ["superuser"], ["vision"], "standard")

sam_roles_string := principal("sam", "analyst", ["vision"], "standard")

rolf_without_roles := object.remove(principal("rolf", [], ["vision"], "standard"), ["roles"])

pat_without_projects := object.remove(principal("pat", ["analyst"], [], "standard"), ["projects"])

nemo_without_tier := object.remove(principal("nemo", ["analyst"], ["vision"], ""), ["tier"])

# The same principal with another credential kind (and, for DPoP, its device's trust).
with_jwt(p) := object.union(p, {"credential": "jwt"})

with_mtls(p) := object.union(p, {"credential": "mtls"})

with_dpop(p, trust) := object.union(p, {"credential": "jwt+dpop", "device": {"trust": trust, "thumbprint": "jkt"}})

with_device(p, trust) := object.union(p, {"device": {"trust": trust, "thumbprint": "jkt"}})

principal(subject, roles, projects, tier) := {
	"subject": subject,
	"roles": roles,
	"projects": projects,
	"tier": tier,
	"credential": "api_key",
}

# ---------------------------------------------------------------------------
# Requests (as built by the Python service)
# ---------------------------------------------------------------------------

infer(model) := request("POST", model, "infer")

metadata(model) := request("GET", model, "metadata")

ready(model) := request("GET", model, "ready")

infer_version(model, version) := object.union(infer(model), {
	"path": sprintf("/v2/models/%s/versions/%s/infer", [model, version]),
	"version": version,
})

request(method, model, action) := {
	"method": method,
	"path": route_path(model, action),
	"model": model,
	"version": "",
	"action": action,
	"source_ip": "127.0.0.1",
	"body": body_of(action),
	"bucket": 0,
}

# Body facts as the service builds them (extauthz/policy/input.py: body_facts, read by
# extauthz/v2body.py): the digits request of tests/e2e/payloads.py.
body_of("infer") := {
	"valid": true, "reason": "ok", "content_type": "", "batch_size": 1, "features": 64,
	"inputs": 1, "datatypes": ["FP64"], "outputs": [], "parameters": [], "output_parameters": [],
}

body_of(action) := {
	"valid": true, "reason": "ok", "content_type": "", "batch_size": 0, "features": 0,
	"inputs": 0, "datatypes": [], "outputs": [], "parameters": [], "output_parameters": [],
} if action != "infer"

# What the service sends for a body it cannot read unambiguously (v2body.BodyError codes).
invalid_body(reason) := object.union(body_of("infer"), {"valid": false, "reason": reason, "batch_size": 0, "features": 0, "inputs": 0, "datatypes": []})

# An infer request of `model` whose body facts are patched with `facts`.
infer_with(model, facts) := object.union(infer(model), {"body": object.union(body_of("infer"), facts)})

from_ip(req, ip) := object.union(req, {"source_ip": ip})

route_path(model, "infer") := sprintf("/v2/models/%s/infer", [model])

route_path(model, "ready") := sprintf("/v2/models/%s/ready", [model])

route_path(model, action) := sprintf("/v2/models/%s", [model]) if not action in {"infer", "ready"}

non_model_route := {
	"method": "GET",
	"path": "/healthz",
	"model": "",
	"version": "",
	"action": "",
	"source_ip": "127.0.0.1",
}

# ---------------------------------------------------------------------------
# Expected decisions (quota literals on purpose: they pin the tier data)
# ---------------------------------------------------------------------------

quota_of := {
	"trial": [
		{"name": "minute", "limit": 5, "window": 60, "key": ["credential"]},
		{"name": "trial_network_minute", "limit": 30, "window": 60, "key": ["source_prefix"]},
	],
	"standard": [
		{"name": "second", "limit": 50, "window": 1, "key": ["credential"]},
		{"name": "minute", "limit": 1000, "window": 60, "key": ["credential"]},
		{"name": "day", "limit": 20000, "window": 86400, "key": ["credential"]},
		{"name": "network_minute", "limit": 3000, "window": 60, "key": ["source_prefix"]},
	],
	"bench": [{"name": "minute", "limit": 10000000, "window": 60}],
}

allowed(tier) := allowed_shaped(tier, {})

allowed_shaped(tier, response) := {
	"allow": true,
	"status": 200,
	"reason": "ok",
	"quota": quota_of[tier],
	"headers": {"x-extauthz-tier": tier},
	"response": object.union({"cache": "no-store"}, response),
}

denied(reason) := {
	"allow": false,
	"status": 403,
	"reason": reason,
	"quota": [],
	"headers": {},
	"response": {},
}

# On mismatch, print both sides so the failing row is easy to diagnose. The quota_context
# (model project, fail mode, throttle factors) is compared only where a test expects one.
same(got, want) if trim(got, want) == want

same(got, want) := false if {
	trim(got, want) != want
	print("got: ", got)
	print("want:", want)
}

# Likewise the served version (versions_test.rego checks it).
trim(got, want) := object.remove(got, [k | some k in ["quota_context", "version"]; not k in object.keys(want)])

# ---------------------------------------------------------------------------
# Robustness: whatever the input, exactly one well-formed decision.
# ---------------------------------------------------------------------------

odd_inputs := {
	"empty input": {},
	"no request": {"principal": alice},
	"no principal": {"request": infer("digits")},
	"request is a string": {"request": "GET /", "principal": alice},
	"model is a number": {"request": object.union(infer("digits"), {"model": 7}), "principal": alice},
	"model is an array": {"request": object.union(infer("digits"), {"model": ["digits"]}), "principal": alice},
	"projects is null": {"request": infer("digits"), "principal": object.union(alice, {"projects": null})},
	"roles is an object": {"request": infer("digits"), "principal": object.union(alice, {"roles": {"analyst": true}})},
	"tier is a number": {"request": infer("digits"), "principal": object.union(alice, {"tier": 1})},
}

expected_odd_reason := {
	"empty input": "unknown_model",
	"no request": "unknown_model",
	"no principal": "project_mismatch",
	"request is a string": "unknown_model",
	"model is a number": "unknown_model",
	"model is an array": "unknown_model",
	"projects is null": "project_mismatch",
	"roles is an object": "role_not_permitted",
	"tier is a number": "unknown_tier",
}

test_odd_inputs_deny_without_error[name] if {
	some name, odd in odd_inputs
	got := authz.decision with input as odd
	same(got, denied(expected_odd_reason[name]))
}

# Every principal of the table against every request of the table (plus the
# odd inputs above): always exactly one decision with exactly the documented
# fields, and status/quota/headers consistent with allow.
test_every_decision_is_well_formed if {
	principals := {row[0] | some row in who_may_do_what}
	requests := {row[1] | some row in who_may_do_what}
	inputs := {{"request": r, "principal": p} | some p in principals; some r in requests} | {x | some x in odd_inputs}
	count(inputs) > 150
	every x in inputs {
		well_formed(authz.decision) with input as x
	}
}

well_formed(d) if {
	object.keys(d) == {"allow", "status", "reason", "quota", "quota_context", "headers", "response", "version"}
	is_string(d.version)
	d.allow == true
	d.status == 200
	d.reason == "ok"
	count(d.quota) > 0
	object.keys(d.headers) == {"x-extauthz-tier"}
	object.keys(d.quota_context) == {"project", "fail_mode", "throttle"}
	is_string(d.quota_context.project)
	d.quota_context.fail_mode in {"open", "closed"}
}

well_formed(d) if {
	object.keys(d) == {"allow", "status", "reason", "quota", "quota_context", "headers", "response", "version"}
	d.quota_context == {}
	d.version == ""
	d.allow == false
	d.status == 403
	d.reason in {
		"unknown_model", "action_not_allowed", "network_not_allowed", "project_mismatch",
		"role_not_permitted", "insufficient_assurance", "malformed_body", "batch_too_large",
		"scores_not_permitted", "parameter_not_allowed", "unknown_tier", "version_not_allowed",
	}
	d.quota == []
	d.headers == {}
}

# ---------------------------------------------------------------------------
# Data changes behave as expected (data overridden with `with`).
# ---------------------------------------------------------------------------

test_action_not_listed_in_catalog_entry if {
	catalog := {"frozen": {"project": "vision", "sensitivity": "public", "owner": "t", "actions": ["metadata"]}}
	got := authz.decision with input as {"request": infer("frozen"), "principal": alice}
		with data.extauthz.catalog as catalog
	same(got, denied("action_not_allowed"))
}

test_public_model_open_to_viewer_metadata if {
	catalog := {"open": {"project": "vision", "sensitivity": "public", "owner": "t", "actions": ["metadata"]}}
	got := authz.decision with input as {"request": metadata("open"), "principal": victor}
		with data.extauthz.catalog as catalog
	same(got, allowed_shaped("standard", {"cache": "tenant"}))
}

test_unknown_sensitivity_label_fails_closed if {
	catalog := {"odd": {"project": "clinical", "sensitivity": "top-secret", "owner": "t", "actions": ["infer"]}}
	got := authz.decision with input as {"request": infer("odd"), "principal": ada}
		with data.extauthz.catalog as catalog
	same(got, denied("role_not_permitted"))
}

# ---------------------------------------------------------------------------
# Data sanity: every label and window referenced by the data is well-formed.
# ---------------------------------------------------------------------------

test_catalog_entries_are_complete if {
	every _, m in data.extauthz.catalog {
		is_string(m.project)
		is_string(m.owner)
		data.extauthz.sensitivity[m.sensitivity] >= 0
		every a in m.actions {
			a in {"infer", "metadata", "ready"}
		}
	}
}

test_role_limits_use_known_labels if {
	every _, limits in data.extauthz.roles {
		every action, label in limits {
			action in {"infer", "metadata", "ready", "scores"}
			data.extauthz.sensitivity[label] >= 0
		}
	}
}

test_tier_windows_are_positive if {
	every _, windows in data.extauthz.tiers {
		count(windows) > 0
		every w in windows {
			is_string(w.name)
			w.limit > 0
			w.window > 0
		}
	}
}

# A window's key lists distinct dimensions the service knows (extauthz/types.py DIMENSIONS);
# an absent key means ["credential"]. Names are unique within a tier (they name the
# RateLimit header entries).
test_tier_window_keys_are_known_dimensions if {
	dimensions := {"credential", "subject", "device", "source_prefix", "project", "model"}
	every _, windows in data.extauthz.tiers {
		count({w.name | some w in windows}) == count(windows)
		every w in windows {
			key := object.get(w, "key", ["credential"])
			count(key) > 0
			count({k | some k in key}) == count(key)
			every k in key {
				k in dimensions
			}
		}
	}
}

test_throttle_factors_cover_every_level_and_sensitivity if {
	object.keys(data.extauthz.throttle) == {"elevated", "high", "critical"}
	every _, factors in data.extauthz.throttle {
		object.keys(factors) == object.keys(data.extauthz.sensitivity)
		every _, f in factors {
			f > 0
			f <= 1
		}
	}
}

# Stricter levels never loosen: each level's factor is at most the one below it.
test_throttle_levels_only_tighten if {
	t := data.extauthz.throttle
	every label, _ in data.extauthz.sensitivity {
		t.high[label] <= t.elevated[label]
		t.critical[label] <= t.high[label]
	}
}

# ---------------------------------------------------------------------------
# quota_context: what the limiter needs beyond the windows
# ---------------------------------------------------------------------------

test_quota_context_of_an_internal_model if {
	d := authz.decision with input as {"request": infer("digits"), "principal": alice}
	d.quota_context == {
		"project": "vision",
		"fail_mode": "closed",
		"throttle": {"elevated": 0.5, "high": 0.25, "critical": 0.1},
	}
}

test_quota_context_of_a_public_fail_open_model if {
	d := authz.decision with input as {"request": infer("iris"), "principal": alice}
	d.quota_context.project == "demo"
	d.quota_context.fail_mode == "open"
}

test_quota_context_of_a_restricted_model_throttles_harder if {
	d := authz.decision with input as caller_input(with_dpop(bob, "managed"), infer("diabetes"))
	d.allow
	d.quota_context.fail_mode == "closed"
	d.quota_context.throttle == {"elevated": 0.25, "high": 0.1, "critical": 0.02}
}

test_quota_context_fail_open_needs_public if {
	catalog := {"open-internal": {"project": "vision", "sensitivity": "internal", "owner": "t", "actions": ["infer"], "max_batch": 8, "fail_mode": "open"}}
	d := authz.decision with input as {"request": infer("open-internal"), "principal": ada}
		with data.extauthz.catalog as catalog
	d.allow
	d.quota_context.fail_mode == "closed"
}

test_quota_context_without_throttle_data if {
	d := authz.decision with input as {"request": infer("digits"), "principal": alice}
		with data.extauthz.throttle as {}
	d.quota_context.throttle == {}
}

test_quota_of_a_tier_carries_window_keys if {
	d := authz.decision with input as {"request": infer("digits"), "principal": alice}
	[w.key | some w in d.quota] == [["credential"], ["credential"], ["credential"], ["source_prefix"]]
}

test_sensitivity_order if {
	s := data.extauthz.sensitivity
	s.public < s.internal
	s.internal < s.confidential
	s.confidential < s.restricted
}

# ---------------------------------------------------------------------------
# Scores permission, networks and the fail-open table under other data.
# ---------------------------------------------------------------------------

test_role_without_scores_permission_gets_labels_only if {
	roles := object.union(object.remove(data.extauthz.roles, ["clinician"]), {"clinician": {"infer": "restricted"}})
	got := authz.decision with input as {"request": infer_with("cancer", {"outputs": ["predict_proba"]}), "principal": carla}
		with data.extauthz.roles as roles
	same(got, denied("scores_not_permitted"))
}

test_no_networks_data_restricts_nothing if {
	got := authz.decision with input as {"request": from_ip(infer("cancer"), "192.0.2.10"), "principal": bob}
		with data.extauthz.networks as {}
	same(got, allowed_shaped("standard", {"round": 2, "max_classes": 1}))
}

test_fallback_lists_only_public_fail_open_models if {
	authz.fallback.open_models == {"iris": ["infer", "metadata", "ready"]}
	authz.fallback.tiers == data.extauthz.tiers
}

test_fallback_never_lists_a_non_public_model if {
	catalog := {
		"open-secret": {"project": "x", "sensitivity": "internal", "owner": "t", "actions": ["infer"], "fail_mode": "open"},
		"open-public": {"project": "x", "sensitivity": "public", "owner": "t", "actions": ["infer"], "fail_mode": "open"},
		"closed-public": {"project": "x", "sensitivity": "public", "owner": "t", "actions": ["infer"], "fail_mode": "closed"},
	}
	open := authz.fallback.open_models with data.extauthz.catalog as catalog
	open == {"open-public": ["infer"]}
}

test_catalog_risk_fields_are_well_formed if {
	every _, m in data.extauthz.catalog {
		m.max_batch >= 1
		is_array(m.score_outputs)
		is_array(m.parameters)
		m.fail_mode in {"open", "closed"}
		authz.hints_valid(m.response)
	}
}

# --- the response plan's vocabulary (rego/README.md, "Response plan")

test_every_catalog_entry_uses_only_the_shaping_vocabulary if {
	every _, m in data.extauthz.catalog {
		authz.hints_valid(m.response)
	}
}

test_cancer_is_rounded_and_top_1_and_never_cached if {
	d := authz.decision with input as {"request": infer("cancer"), "principal": bob}
	d.response == {"round": 2, "max_classes": 1, "cache": "no-store"}
}

test_public_answers_are_cached_per_caller_only if {
	d := authz.decision with input as {"request": infer("iris"), "principal": alice}
	d.response == {"cache": "tenant"}
}

test_a_catalog_cannot_make_a_confidential_answer_cacheable if {
	catalog := {"m": object.union(data.extauthz.catalog.digits, {"response": {"cache": "tenant"}})}
	d := authz.decision with input as {"request": infer("m"), "principal": alice}
		with data.extauthz.catalog as catalog
	d.response.cache == "no-store"
}

test_shaping_hints_accept_the_vocabulary if {
	authz.hints_valid({"round": 0, "max_classes": 3, "labels_only": true, "drop_outputs": ["predict_proba"]})
	authz.hints_valid({})
}

test_shaping_hints_refuse_anything_else if {
	not authz.hints_valid({"top_k": 1})
	not authz.hints_valid({"round": 7})
	not authz.hints_valid({"round": 1.5})
	not authz.hints_valid({"round": "2"})
	not authz.hints_valid({"max_classes": 0})
	not authz.hints_valid({"labels_only": "yes"})
	not authz.hints_valid({"drop_outputs": "predict"})
	not authz.hints_valid({"drop_outputs": ["_private"]})
	not authz.hints_valid({"drop_outputs": ["a", "b", "c", "d", "e", "f", "g", "h", "i"]})
	not authz.hints_valid([])
}

test_network_ranges_are_valid_cidrs if {
	every _, ranges in data.extauthz.networks {
		every cidr in ranges {
			net.cidr_is_valid(cidr)
		}
	}
}
