package extauthz.assurance_test

import data.extauthz.authz

# Data sanity: every sensitivity label has a requirement naming known credentials and a known
# trust level; every mTLS identity maps to roles, projects and a known tier.

test_every_sensitivity_has_an_assurance_requirement if {
	every label, _ in data.extauthz.sensitivity {
		req := data.extauthz.assurance.by_sensitivity[label]
		count(req.credentials) > 0
		every c in req.credentials {
			c in {"api_key", "jwt", "jwt+dpop", "mtls"}
		}
		data.extauthz.assurance.device_trust[req.min_device_trust] >= 0
	}
}

test_device_trust_order if {
	t := data.extauthz.assurance.device_trust
	t.none < t.registered
	t.registered < t.managed
	t.managed < t.attested
}

test_mtls_identities_are_well_formed if {
	every name, entry in data.extauthz.mtls_identities {
		is_string(name)
		is_array(entry.roles)
		is_array(entry.projects)
		is_array(data.extauthz.tiers[entry.tier])
	}
}

# A sensitivity without a requirement fails closed.
test_sensitivity_without_requirement_denies if {
	assurance := {"device_trust": data.extauthz.assurance.device_trust, "by_sensitivity": {}}
	bob := {"subject": "bob", "roles": ["clinician"], "projects": ["clinical"], "tier": "standard", "credential": "jwt+dpop"}
	req := {"method": "GET", "path": "/v2/models/cancer", "model": "cancer", "version": "", "action": "metadata", "source_ip": "127.0.0.1"}
	got := authz.decision with input as {"request": req, "principal": bob, "device": {"trust": "attested", "thumbprint": "t"}}
		with data.extauthz.assurance as assurance
	got.reason == "insufficient_assurance"
}

# A device field of the wrong type counts as no device.
test_malformed_device_is_no_device if {
	bob := {"subject": "bob", "roles": ["clinician"], "projects": ["clinical"], "tier": "standard", "credential": "jwt+dpop"}
	req := {"method": "GET", "path": "/v2/models/diabetes", "model": "diabetes", "version": "", "action": "metadata", "source_ip": "127.0.0.1"}
	every device in [{"trust": 2}, "managed", null, {"trust": ["managed"]}] {
		got := authz.decision with input as {"request": req, "principal": bob, "device": device}
		got.reason == "insufficient_assurance"
	}
}
