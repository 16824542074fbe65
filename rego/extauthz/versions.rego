# Model versions: canary and blue-green per model version (rego/README.md, "Model versions").
#
# A catalog entry may name its versions:
#   "versions": {"v1": {"weight": 100}, "v2": {"weight": 0, "projects": ["vision-beta"], "testers": ["qa"]}},
#   "stable": "v1", "previous": ""
# The policy (not Envoy) picks the version each request is served by, so that eligibility can
# differ per version, the decision log names the version served, and a caller stays on one
# version (input.request.bucket: a keyed hash of subject and model, 0-99, computed by the
# service). The service sends the choice as x-extauthz-model-version; Envoy routes on it.
# Models without versions are served as before (served_version ""; an explicit
# /versions/{v} goes to the model server as asked).
package extauthz.authz

versions := object.get(model, "versions", {})

versioned if {
	is_object(versions)
	count(versions) > 0
}

requested_version := object.get(input.request, "version", "")

# --- who may be served a version ----------------------------------------------

# A version that is not retired.
live_version(v) if {
	is_object(versions[v])
	object.get(versions[v], "retired", false) == false
}

# Open to every caller of the model, or to the projects it lists ...
version_projects_ok(entry) if not "projects" in object.keys(entry)

version_projects_ok(entry) if {
	some project in entry.projects
	project in input.principal.projects
}

# ... and always to the testers it names (subjects), whatever their projects.
version_tester(v) if input.principal.subject in object.get(versions[v], "testers", [])

version_eligible(v) if {
	live_version(v)
	version_projects_ok(versions[v])
}

version_eligible(v) if {
	live_version(v)
	version_tester(v)
}

# --- which version -------------------------------------------------------------

# The caller's sticky bucket; undefined (no weighted choice) unless an integer in [0, 100).
bucket := b if {
	b := input.request.bucket
	is_number(b)
	b == round(b)
	b >= 0
	b < 100
}

weight_of(v) := w if {
	w := versions[v].weight
	is_number(w)
}

# The eligible versions with a positive weight, in name order; the bucket falls into one of
# them in proportion to the weights (buckets low to high: the versions in name order, so a
# growing canary named after the stable version only ever takes callers, never hands back).
weighted_versions := sort([v |
	some v, _ in versions
	version_eligible(v)
	weight_of(v) > 0
])

cumulative_weight(i) := sum([weight_of(weighted_versions[j]) |
	some j, _ in weighted_versions
	j <= i
])

weighted_version := weighted_versions[index] if {
	b := bucket # undefined bucket: no weighted choice (not bucket 0)
	n := count(weighted_versions)
	n > 0
	total := cumulative_weight(n - 1)
	index := count([i |
		some i, _ in weighted_versions
		cumulative_weight(i) * 100 <= b * total
	])
}

# A tester is pinned to the version naming them (the last by name if several do).
tester_versions := sort([v |
	some v, _ in versions
	live_version(v)
	version_tester(v)
])

# What an unversioned path gets: a tester's pin, else the weighted choice, else the stable
# version (every eligible version at weight 0), else nothing (denied: version_not_allowed).
default_version := tester_versions[count(tester_versions) - 1] if {
	count(tester_versions) > 0
} else := weighted_version if {
	weighted_version
} else := model.stable if {
	version_eligible(model.stable)
}

served_version := "" if not versioned

# An explicit /versions/{v} only if that version exists and the caller is eligible for it.
served_version := requested_version if {
	versioned
	requested_version != ""
	version_eligible(requested_version)
}

served_version := default_version if {
	versioned
	requested_version == ""
}

version_ok if is_string(served_version)
