# Graduated responses of the analytics worker (extauthz/analytics/), reviewed like policy.
#
# Entry point: data.extauthz.analytics.response (POST /v1/data/extauthz/analytics/response),
# asked by the worker for a tenant whose scores reached a threshold. Input (README, "Behavioural
# analytics"): {"scores": {detector: 0..1}, "rows": rows scored for the tenant,
# "network": {"subjects": distinct subjects of its source network, "rows": their rows}};
# scores: ood, prada, neardup, output (the tenant's own), network and shared (across tenants).
# Data: data.extauthz.detectors {thresholds, min_rows, network, delay, steps}.
package extauthz.analytics

config := data.extauthz.detectors

# score / threshold of each detector the input scored and the data has a threshold for
strength[name] := score / config.thresholds[name] if {
	some name, score in input.scores
	config.thresholds[name] > 0
}

own_strengths := [v | some name, v in strength; name != "network"]

default own := 0

own := max(own_strengths) if count(own_strengths) > 0

# The network score counts only for a tenant that is itself half-way suspicious, from a
# network where several subjects sent enough rows: a shared NAT is not guilt by association.
network_counts if {
	own >= config.network.min_own
	input.network.subjects >= config.network.min_subjects
	input.network.rows >= config.network.min_rows
	input.rows >= config.network.min_tenant_rows
}

# A tenant's own detectors judge it from min_rows rows on, a detector named in min_rows_by from
# its own minimum: `ood` flags each row alone against the owner's 0.99 calibration quantile, so
# half of 10 rows flagged by chance is ~1e-6 for a real client, while PRADA's KS test and the
# boundary share need more rows to mean anything.
counted[name] := v if {
	some name, v in strength
	not name in {"network", "shared"}
	input.rows >= object.get(config, ["min_rows_by", name], config.min_rows)
}

counted["network"] := strength.network if network_counts

# Flagged rows whose fingerprints other subjects sent too (Sybils spread over networks): judged
# from a few rows on, as for a network.
counted["shared"] := strength.shared if input.rows >= config.network.min_tenant_rows

over := sort([name | some name, v in counted; v >= 1])

default top := 0

top := max([v | some _, v in counted]) if count(counted) > 0

levels := [step.level |
	some step in config.steps
	top >= step.min_strength
	count(over) >= step.min_over
	input.rows >= step.min_rows
]

# A network whose traffic is mostly flagged, spread over many subjects (a Sybil: many keys, one
# network): each of its subjects that is itself half-way suspicious is quarantined, from a few
# rows of its own, before the keys' combined rows reach what one key would need. A shared NAT's
# clean users are untouched (network_counts needs the tenant's own scores).
network_quarantine if {
	network_counts
	q := config.network.quarantine
	strength.network >= q.min_strength
	input.network.subjects >= q.min_subjects
	input.network.rows >= q.min_rows
	input.rows >= q.min_tenant_rows
}

network_levels := [s.level | some s in config.steps; s.quarantine > 0; network_quarantine]

all_levels := array.concat(levels, network_levels)

default level := 0

level := max(all_levels) if count(all_levels) > 0

default step := {"level": 0, "risk": 1, "degrade": 0, "quarantine": 0, "ttl": 0}

step := s if {
	some s in config.steps
	s.level == level
}

response := {
	"level": level,
	"risk": step.risk,
	"degrade": step.degrade,
	"quarantine": step.quarantine,
	"ttl": step.ttl,
	"over": over,
	"strength": top,
	"delay": config.delay,
}
