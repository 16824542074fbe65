package extauthz.versions_test

import data.extauthz.authz

# Callers: alice (vision), bea (vision + vision-beta), qa (vision, named tester of v2).
alice := {"subject": "alice", "roles": ["analyst"], "projects": ["vision"], "tier": "standard", "credential": "api_key"}

bea := object.union(alice, {"subject": "bea", "projects": ["vision", "vision-beta"]})

qa := object.union(alice, {"subject": "digits-qa"})

infer(bucket) := {
	"method": "POST", "path": "/v2/models/digits/infer", "model": "digits", "version": "",
	"action": "infer", "source_ip": "127.0.0.1", "bucket": bucket,
	"body": {
		"valid": true, "reason": "ok", "content_type": "", "batch_size": 1, "features": 64,
		"inputs": 1, "datatypes": ["FP64"], "outputs": [], "parameters": [], "output_parameters": [],
	},
}

infer_version(bucket, v) := object.union(infer(bucket), {"version": v, "path": sprintf("/v2/models/digits/versions/%s/infer", [v])})

# The demo entry with other weights (what `extauthz models shift` writes).
digits_with(weights) := {"digits": object.union(data.extauthz.catalog.digits, {"versions": {v: object.union(data.extauthz.catalog.digits.versions[v], {"weight": w}) | some v, w in weights}})}

# The demo entry with other versions (and stable, previous).
entry_with(changes) := object.union(object.remove(data.extauthz.catalog.digits, ["versions"]), changes)

# The version each bucket 0..99 gets.
served(p, catalog) := [d.version |
	some b in numbers.range(0, 99)
	d := authz.decision with input as {"request": infer(b), "principal": p}
		with data.extauthz.catalog as catalog
]

count_of(vs, v) := count([x | some x in vs; x == v])

test_the_demo_catalog_serves_v1_to_everyone if {
	every p in [alice, bea] {
		vs := served(p, data.extauthz.catalog)
		count_of(vs, "v1") == 100
	}
}

test_a_tester_is_pinned_to_the_version_naming_them if {
	vs := served(qa, data.extauthz.catalog)
	count_of(vs, "v2") == 100
}

test_half_and_half_for_the_eligible if {
	vs := served(bea, digits_with({"v1": 50, "v2": 50}))
	count_of(vs, "v1") == 50
	count_of(vs, "v2") == 50

	# buckets 0-49 the first version by name, 50-99 the second
	vs[49] == "v1"
	vs[50] == "v2"
}

test_a_project_not_eligible_for_the_canary_never_gets_it if {
	vs := served(alice, digits_with({"v1": 10, "v2": 90}))
	count_of(vs, "v1") == 100
}

test_weights_that_do_not_total_100_are_proportions if {
	vs := served(bea, digits_with({"v1": 1, "v2": 3}))
	count_of(vs, "v1") == 25
	count_of(vs, "v2") == 75
}

test_a_growing_canary_only_takes_callers if {
	at10 := served(bea, digits_with({"v1": 90, "v2": 10}))
	at50 := served(bea, digits_with({"v1": 50, "v2": 50}))
	count_of(at10, "v2") == 10
	every b in [b | some b, v in at10; v == "v2"] {
		at50[b] == "v2"
	}
}

test_promoted_serves_everyone_eligible_the_new_version if {
	catalog := {"digits": entry_with({
		"versions": {"v1": {"weight": 0}, "v2": {"weight": 100}},
		"stable": "v2", "previous": "v1",
	})}
	count_of(served(alice, catalog), "v2") == 100
}

test_no_weighted_version_falls_back_to_the_stable_one if {
	# alice is not eligible for v2 (weight 100); v1 has weight 0 but is stable
	vs := served(alice, digits_with({"v1": 0, "v2": 100}))
	count_of(vs, "v1") == 100
}

test_nothing_eligible_is_denied if {
	catalog := {"digits": entry_with({
		"versions": {"v1": {"weight": 0, "retired": true}, "v2": {"weight": 100, "projects": ["vision-beta"]}},
		"stable": "v1",
	})}
	d := authz.decision with input as {"request": infer(10), "principal": alice}
		with data.extauthz.catalog as catalog
	not d.allow
	d.reason == "version_not_allowed"
	d.version == ""
}

test_an_explicit_version_needs_eligibility if {
	d1 := authz.decision with input as {"request": infer_version(3, "v2"), "principal": alice}
	d1.reason == "version_not_allowed"
	d2 := authz.decision with input as {"request": infer_version(3, "v2"), "principal": bea}
	d2.allow
	d2.version == "v2"
	d3 := authz.decision with input as {"request": infer_version(3, "v2"), "principal": qa}
	d3.version == "v2"
	d4 := authz.decision with input as {"request": infer_version(3, "v1"), "principal": qa}
	d4.version == "v1"
}

test_a_retired_version_is_denied_even_when_asked_for if {
	catalog := {"digits": entry_with({
		"versions": {"v1": {"weight": 100}, "v0": {"weight": 0, "retired": true, "testers": ["digits-qa"]}},
		"stable": "v1",
	})}
	d := authz.decision with input as {"request": infer_version(3, "v0"), "principal": qa}
		with data.extauthz.catalog as catalog
	d.reason == "version_not_allowed"
	d2 := authz.decision with input as {"request": infer(3), "principal": qa}
		with data.extauthz.catalog as catalog
	d2.version == "v1"
}

test_an_unknown_version_is_denied if {
	d := authz.decision with input as {"request": infer_version(3, "v9"), "principal": bea}
	d.reason == "version_not_allowed"
}

test_a_malformed_bucket_gets_the_stable_version if {
	every b in [-1, 100, 2.5, "7", null] {
		d := authz.decision with input as {"request": infer(b), "principal": bea}
			with data.extauthz.catalog as digits_with({"v1": 0, "v2": 100})
		d.version == "v1"
	}
}

test_the_version_does_not_bypass_earlier_checks if {
	victor := object.union(alice, {"subject": "victor", "roles": ["viewer"]})
	d := authz.decision with input as {"request": infer_version(3, "v1"), "principal": victor}
	d.reason == "role_not_permitted"
}

test_metadata_of_a_versioned_model_names_the_version if {
	req := object.union(infer(60), {"method": "GET", "action": "metadata", "path": "/v2/models/digits", "body": {"valid": true}})
	d := authz.decision with input as {"request": req, "principal": bea}
		with data.extauthz.catalog as digits_with({"v1": 50, "v2": 50})
	d.allow
	d.version == "v2"
}

test_unversioned_models_serve_no_version if {
	req := object.union(infer(3), {"model": "iris", "path": "/v2/models/iris/infer"})
	d := authz.decision with input as {"request": req, "principal": alice}
	d.allow
	d.version == ""
}

# Data sanity: every versioned entry is well formed (the CLI refuses to write anything else).
test_catalog_versions_are_well_formed if {
	every _, m in data.extauthz.catalog {
		every v, entry in object.get(m, "versions", {}) {
			regex.match(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`, v)
			is_number(entry.weight)
			entry.weight >= 0
			entry.weight <= 100
		}
		versions_total_ok(m)
	}
}

versions_total_ok(m) if not m.versions

versions_total_ok(m) if {
	sum([e.weight | some e in m.versions]) == 100
	m.stable in object.keys(m.versions)
}
