package system.log_test

import data.system.log

test_revision_poll_is_dropped if {
	log.drop with input as {"path": "extauthz"}
}

test_decisions_are_kept if {
	not log.drop with input as {"path": "extauthz/authz/decision"}
}
