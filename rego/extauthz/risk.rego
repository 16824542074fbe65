# Risky-request gating and network ranges: checks over the request facts the service parsed
# from the V2 inference body (input.request.body) and the caller's address. Each is a named
# boolean; authz.rego's reason chain negates only these names (see the NOTE there).
package extauthz.authz

body := object.get(input.request, "body", {})

# Only infer requests carry a body the policy reads. The service reads it once, the way the
# model server will (extauthz/v2body.py); a body it cannot read unambiguously has
# valid false (body.reason says why: private parameter, shape/data mismatch, too deep, ...).
body_ok if input.request.action != "infer"

body_ok if body.valid == true

# Large batches make extraction cheap: each model caps its batch size. batch_size is the
# number of rows the server will run (pandas: each input's length; otherwise shape[0]).
batch_ok if input.request.action != "infer"

batch_ok if {
	is_number(body.batch_size)
	body.batch_size <= model.max_batch
}

# Raw scores (e.g. predict_proba) leak far more than labels. A role may request them only up
# to the sensitivity it is granted "scores" at.
requested_scores contains name if {
	some name in body.outputs
	name in object.get(model, "score_outputs", [])
}

scores_ok if count(requested_scores) == 0

scores_ok if {
	some role in input.principal.roles
	max_label := roles[role].scores
	sensitivity[max_label] >= model_rank
}

# Inference parameters the model's owner has not listed are refused, at every level: the
# request's and each input's (parameters), and each requested output's (output_parameters).
parameters_ok if {
	allowed := object.get(model, "parameters", [])
	every name in array.concat(object.get(body, "parameters", []), object.get(body, "output_parameters", [])) {
		name in allowed
	}
}

# A project may restrict its models to callers from given ranges (the address Envoy saw).
default networks := {}

networks := data.extauthz.networks

project_ranges := object.get(networks, model.project, [])

network_ok if count(project_ranges) == 0

network_ok if {
	some cidr in project_ranges
	net.cidr_contains(cidr, input.request.source_ip)
}

# What the service may serve while OPA is unreachable: only public models whose catalog entry
# says fail_mode "open", with each tier's quota. Decided here, cached by the service.
fallback := {
	"open_models": {name: entry.actions |
		some name, entry in catalog
		entry.sensitivity == "public"
		entry.fail_mode == "open"
	},
	"tiers": tiers,
}
