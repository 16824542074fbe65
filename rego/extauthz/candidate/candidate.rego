# A candidate policy, evaluated in shadow (dry-run) mode beside the enforced one:
#   EXTAUTHZ_SHADOW_DECISION_PATH=extauthz/candidate/decision
# Disagreements are counted and logged; clients only ever see extauthz.authz's decision.
# This example trials a stricter extraction defence: every model's batch cap lowered to 8.
package extauthz.candidate

import data.extauthz.authz

max_batch := 8

stricter_catalog[name] := object.union(entry, {"max_batch": min([entry.max_batch, max_batch])}) if {
	some name, entry in data.extauthz.catalog
}

decision := d if {
	d := authz.decision with data.extauthz.catalog as stricter_catalog
}
