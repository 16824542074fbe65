package extauthz.analytics_test

import data.extauthz.analytics

benign := {"ood": 0.02, "prada": 0.2, "neardup": 0, "output": 0.15}

noise := {"ood": 1, "prada": 0.93, "neardup": 0, "output": 0.47}

test_benign_replay_is_never_actioned if {
	r := analytics.response with input as {"scores": benign, "rows": 500, "network": {"subjects": 1, "rows": 500}}
	r.level == 0
	r.risk == 1
	r.degrade == 0
	r.quarantine == 0
}

test_too_few_rows_are_not_judged if {
	r := analytics.response with input as {"scores": noise, "rows": 9, "network": {"subjects": 1, "rows": 9}}
	r.level == 0

	# below min_rows only ood (min_rows_by) is judged: the other detectors wait for 30 rows
	walk := {"ood": 0, "prada": 1, "neardup": 1, "output": 1}
	w := analytics.response with input as {"scores": walk, "rows": 29, "network": {"subjects": 1, "rows": 29}}
	w.level == 0
}

test_out_of_distribution_queries_are_degraded_from_ten_rows if {
	# equation solving: uniform random rows with scores; top-1 before the ~50 rows it needs
	r := analytics.response with input as {"scores": noise, "rows": 10, "network": {"subjects": 1, "rows": 10}}
	r.level == 2
	r.degrade == 2
	r.quarantine == 0
	r.over == ["ood"]

	# a real client's chance ood rows (~2 %) at ten rows stays under the threshold
	b := analytics.response with input as {"scores": object.union(benign, {"ood": 0.2}), "rows": 10, "network": {"subjects": 1, "rows": 10}}
	b.level == 0
}

test_the_delay_is_short_but_random if {
	r := analytics.response with input as {"scores": noise, "rows": 10, "network": {"subjects": 1, "rows": 10}}
	r.delay.min > 0
	r.delay.max > r.delay.min
	r.delay.max <= 1
}

test_noise_climbs_the_ladder_with_rows if {
	low := analytics.response with input as {"scores": noise, "rows": 40, "network": {"subjects": 1, "rows": 40}}
	low.level == 2
	low.degrade == 2
	mid := analytics.response with input as {"scores": noise, "rows": 80, "network": {"subjects": 1, "rows": 80}}
	mid.level == 3
	mid.degrade == 3
	high := analytics.response with input as {"scores": noise, "rows": 150, "network": {"subjects": 1, "rows": 150}}
	high.level == 4
	high.quarantine > 0
	high.over == ["ood", "prada"]
}

test_one_detector_just_over_is_the_first_step if {
	r := analytics.response with input as {"scores": {"ood": 0.55}, "rows": 200, "network": {"subjects": 1, "rows": 200}}
	r.level == 1
	r.risk < 1
	r.degrade == 1
	r.quarantine == 0
}

test_a_boundary_walk_is_quarantined if {
	walk := {"ood": 0, "prada": 1, "neardup": 1, "output": 1}
	r := analytics.response with input as {"scores": walk, "rows": 130, "network": {"subjects": 1, "rows": 130}}
	r.level == 4
}

test_network_counts_only_for_suspicious_tenants if {
	clean := analytics.response with input as {"scores": object.union(benign, {"network": 1}), "rows": 20, "network": {"subjects": 10, "rows": 300}}
	clean.level == 0
	sybil := {"ood": 0.4, "network": 0.9}
	r := analytics.response with input as {"scores": sybil, "rows": 20, "network": {"subjects": 3, "rows": 300}}
	r.level == 2
	r.over == ["network"]
	alone := analytics.response with input as {"scores": sybil, "rows": 20, "network": {"subjects": 1, "rows": 300}}
	alone.level == 0
}

test_sybils_sharing_fingerprints_across_networks_are_actioned_early if {
	r := analytics.response with input as {"scores": {"ood": 0.2, "shared": 0.5}, "rows": 8, "network": {"subjects": 1, "rows": 8}}
	r.level == 2
	r.over == ["shared"]
	few := analytics.response with input as {"scores": {"shared": 1}, "rows": 3, "network": {"subjects": 1, "rows": 3}}
	few.level == 0
}

test_steps_only_tighten if {
	steps := data.extauthz.detectors.steps
	every i in numbers.range(1, count(steps) - 1) {
		steps[i].level > steps[i - 1].level
		steps[i].risk <= steps[i - 1].risk
		steps[i].degrade >= steps[i - 1].degrade
		steps[i].min_strength >= steps[i - 1].min_strength
	}
	every s in steps {
		s.risk > 0
		s.risk <= 1
		s.degrade in {0, 1, 2, 3}
		s.ttl > 0
	}
	data.extauthz.detectors.delay.min <= data.extauthz.detectors.delay.max
}

test_a_one_network_sybil_is_quarantined_from_a_few_rows_per_key if {
	sybil := {"ood": 0.4, "network": 0.6}
	r := analytics.response with input as {"scores": sybil, "rows": 12, "network": {"subjects": 10, "rows": 160}}
	r.level == 4
	r.quarantine > 0

	# not yet: too few subjects, too few network rows, too few of its own rows
	few := analytics.response with input as {"scores": sybil, "rows": 12, "network": {"subjects": 4, "rows": 160}}
	few.quarantine == 0
	young := analytics.response with input as {"scores": sybil, "rows": 12, "network": {"subjects": 10, "rows": 140}}
	young.quarantine == 0
	own := analytics.response with input as {"scores": sybil, "rows": 9, "network": {"subjects": 10, "rows": 160}}
	own.quarantine == 0

	# a weak network share is not enough
	weak := analytics.response with input as {"scores": {"ood": 0.4, "network": 0.45}, "rows": 12, "network": {"subjects": 10, "rows": 160}}
	weak.quarantine == 0
}

test_a_shared_nat_clean_user_is_not_quarantined if {
	r := analytics.response with input as {"scores": object.union(benign, {"network": 1}), "rows": 200, "network": {"subjects": 50, "rows": 5000}}
	r.level == 0
}
