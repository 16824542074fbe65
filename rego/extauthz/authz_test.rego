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
	"alice infers digits version 2": [alice, infer_version("digits", "2"), allowed("standard")],
	"alice infers cancer": [alice, infer("cancer"), denied("project_mismatch")],
	"alice infers echo": [alice, infer("echo"), denied("project_mismatch")],
	# bob: clinician on the clinical project
	"bob infers cancer": [bob, infer("cancer"), allowed("standard")],
	"bob infers diabetes": [bob, infer("diabetes"), allowed("standard")],
	"bob reads diabetes metadata": [bob, metadata("diabetes"), allowed("standard")],
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
	"ada infers diabetes": [ada, infer("diabetes"), allowed("bench")],
	"ada infers digits": [ada, infer("digits"), allowed("bench")],
	# multiple roles: any one permitting role is enough
	"dora (viewer+clinician) infers cancer": [dora, infer("cancer"), allowed("standard")],
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
}

test_who_may_do_what[name] if {
	some name, [principal, req, want] in who_may_do_what
	got := authz.decision with input as {"request": req, "principal": principal}
	same(got, want)
}

# ---------------------------------------------------------------------------
# Principals
# ---------------------------------------------------------------------------

alice := principal("alice", ["analyst"], ["vision"], "standard")

bob := principal("bob", ["clinician"], ["clinical"], "standard")

victor := principal("victor", ["viewer"], ["vision"], "standard")

carol := principal("carol", ["analyst"], ["clinical"], "standard")

olga := principal("olga", ["operator"], ["ops"], "trial")

ada := principal("ada", ["admin"], ["vision", "clinical", "ops"], "bench")

dora := principal("dora", ["viewer", "clinician"], ["clinical"], "standard")

mallory := principal("mallory", ["analyst"], ["vision"], "gold")

mallory_clinical := principal("mallory", ["analyst"], ["clinical"], "gold")

uma_unknown_role := principal("uma", ["superuser"], ["vision"], "standard")

sam_roles_string := principal("sam", "analyst", ["vision"], "standard")

rolf_without_roles := object.remove(principal("rolf", [], ["vision"], "standard"), ["roles"])

pat_without_projects := object.remove(principal("pat", ["analyst"], [], "standard"), ["projects"])

nemo_without_tier := object.remove(principal("nemo", ["analyst"], ["vision"], ""), ["tier"])

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
}

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
	"trial": [{"name": "minute", "limit": 5, "window": 60}],
	"standard": [
		{"name": "second", "limit": 50, "window": 1},
		{"name": "minute", "limit": 1000, "window": 60},
	],
	"bench": [{"name": "minute", "limit": 10000000, "window": 60}],
}

allowed(tier) := {
	"allow": true,
	"status": 200,
	"reason": "ok",
	"quota": quota_of[tier],
	"headers": {"x-extauthz-tier": tier},
}

denied(reason) := {
	"allow": false,
	"status": 403,
	"reason": reason,
	"quota": [],
	"headers": {},
}

# On mismatch, print both sides so the failing row is easy to diagnose.
same(got, want) if got == want

same(got, want) := false if {
	got != want
	print("got: ", got)
	print("want:", want)
}

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
	object.keys(d) == {"allow", "status", "reason", "quota", "headers"}
	d.allow == true
	d.status == 200
	d.reason == "ok"
	count(d.quota) > 0
	object.keys(d.headers) == {"x-extauthz-tier"}
}

well_formed(d) if {
	object.keys(d) == {"allow", "status", "reason", "quota", "headers"}
	d.allow == false
	d.status == 403
	d.reason in {"unknown_model", "action_not_allowed", "project_mismatch", "role_not_permitted", "unknown_tier"}
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
	same(got, allowed("standard"))
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
			action in {"infer", "metadata", "ready"}
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

test_sensitivity_order if {
	s := data.extauthz.sensitivity
	s.public < s.internal
	s.internal < s.confidential
	s.confidential < s.restricted
}
