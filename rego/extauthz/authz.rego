# Envoy ext_authz policy for model-server routes.
#
# Entry point: data.extauthz.authz.decision (POST /v1/data/extauthz/authz/decision).
# The decision is always a fully-populated object; see rego/README.md.
#
# Data (loaded from the JSON files next to this file):
#   data.extauthz.catalog      model name -> {project, sensitivity, owner, actions, ...}
#   data.extauthz.roles        role -> action -> highest sensitivity the role may use it at
#   data.extauthz.tiers        tier -> list of quota windows {name, limit, window, key}
#   data.extauthz.throttle     threat level -> sensitivity -> limit factor
#   data.extauthz.sensitivity  sensitivity label -> rank (public 0 .. restricted 3)
#   data.extauthz.assurance    sensitivity -> credentials + least device trust (assurance.rego)
# A model's versions (canary / blue-green) are chosen in versions.rego.
package extauthz.authz

catalog := data.extauthz.catalog

roles := data.extauthz.roles

tiers := data.extauthz.tiers

sensitivity := data.extauthz.sensitivity

# --- facts about the request ------------------------------------------------

# Catalog entry of the requested model; undefined for unknown models and for
# non-model routes (model == "").
model := catalog[input.request.model]

# NOTE: checks are named boolean rules and the reason chain only ever negates
# those names. `not is_object(model)` would NOT be true for an undefined
# `model`: OPA hoists ref arguments out of the negation (opa#1877, opa#4743).
known_model if is_object(model)

# Rank of the model's sensitivity label (undefined if the label is unknown,
# which makes every role check fail closed).
model_rank := sensitivity[model.sensitivity]

action_listed if input.request.action in model.actions

project_member if model.project in input.principal.projects

# Public models are open to every authenticated caller, whatever their projects.
project_member if model.sensitivity == "public"

# Some role of the principal permits the action at the model's sensitivity.
# Missing or malformed roles simply permit nothing.
role_permits if {
	some role in input.principal.roles
	max_label := roles[role][input.request.action]
	sensitivity[max_label] >= model_rank
}

# Quota windows of the principal's tier; undefined for unknown tiers.
quota := tiers[input.principal.tier]

known_tier if is_array(quota)

# What the limiter needs beyond the windows: the model's project (the `project` dimension of a
# window's key), whether an in-process limiter may stand in while Redis is down (only public
# models whose catalog entry says fail_mode "open", as for OPA outages), and the factor each
# threat level multiplies limits by at the model's sensitivity.
default throttle := {}

throttle := data.extauthz.throttle

quota_context := {
	"project": object.get(model, "project", ""),
	"fail_mode": redis_fail_mode,
	"throttle": {level: factor |
		some level, factors in throttle
		factor := factors[model.sensitivity]
	},
}

redis_fail_mode := "open" if {
	model.sensitivity == "public"
	model.fail_mode == "open"
} else := "closed"

# --- response plan ------------------------------------------------------------

# What the response path does to an allowed answer (rego/README.md, "Response plan"): the
# catalog entry's shaping hints, and how caches may keep the answer. Only a public model's
# answers may be cached, and then only by the caller's own cache ("tenant"); everything else
# is "no-store". The service validates the vocabulary (shaping_hints) and fails closed on
# anything else; it merges the subject's degradation level into the plan (the stricter wins).
shaping_hints := {"round", "max_classes", "labels_only", "drop_outputs"}

response_plan := object.union(object.get(model, "response", {}), {"cache": cache_mode})

cache_mode := "tenant" if {
	model.sensitivity == "public"
} else := "no-store"

# A catalog entry's hints are well formed: known names, and values of the right kind.
hints_valid(hints) if {
	is_object(hints)
	every name, value in hints {
		name in shaping_hints
		hint_value_ok(name, value)
	}
}

hint_value_ok("round", n) if {
	is_number(n)
	n == round(n)
	n >= 0
	n <= 6
}

hint_value_ok("max_classes", n) if {
	is_number(n)
	n == round(n)
	n >= 1
	n <= 1000
}

hint_value_ok("labels_only", b) if is_boolean(b)

hint_value_ok("drop_outputs", names) if {
	is_array(names)
	count(names) <= 8
	every name in names {
		regex.match(`^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}$`, name)
	}
}

# --- outcome ------------------------------------------------------------------

# Exactly one reason for every input: the first failing check wins.
reason := "unknown_model" if {
	not known_model
} else := "action_not_allowed" if {
	not action_listed
} else := "network_not_allowed" if {
	not network_ok
} else := "project_mismatch" if {
	not project_member
} else := "role_not_permitted" if {
	not role_permits
} else := "insufficient_assurance" if {
	not credential_sufficient
} else := "version_not_allowed" if {
	not version_ok
} else := "malformed_body" if {
	not body_ok
} else := "batch_too_large" if {
	not batch_ok
} else := "scores_not_permitted" if {
	not scores_ok
} else := "parameter_not_allowed" if {
	not parameters_ok
} else := "unknown_tier" if {
	not known_tier
} else := "ok"

allow if reason == "ok"

decision := {
	"allow": true,
	"status": 200,
	"reason": reason,
	"quota": quota,
	"quota_context": quota_context,
	"headers": {"x-extauthz-tier": input.principal.tier},
	"response": response_plan,
	"version": served_version,
} if {
	allow
}

decision := {
	"allow": false,
	"status": 403,
	"reason": reason,
	"quota": [],
	"quota_context": {},
	"headers": {},
	"response": {},
	"version": "",
} if {
	not allow
}
