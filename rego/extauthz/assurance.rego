# Credential assurance: which kinds of credential, and how trusted a device, may reach a model
# of each sensitivity (data.extauthz.assurance). The shipped default: `restricted` models only
# with a DPoP-bound JWT (credential "jwt+dpop") proved by a device enrolled as `managed` or
# better; every other sensitivity takes any credential. A named boolean, negated only in
# authz.rego's reason chain (see the NOTE there).
package extauthz.authz

assurance := data.extauthz.assurance

# Trust of the device whose key proved possession (input.device.trust); "none" when the
# request carried no proof, the key is not enrolled for the subject, or the field is missing.
default device_trust := "none"

device_trust := input.device.trust if is_string(input.device.trust)

# An unknown trust label ranks as "none".
device_rank := object.get(assurance.device_trust, device_trust, 0)

# The model's requirement; undefined for a sensitivity without one (fails closed).
required_assurance := assurance.by_sensitivity[model.sensitivity]

credential_sufficient if {
	input.principal.credential in required_assurance.credentials
	device_rank >= assurance.device_trust[required_assurance.min_device_trust]
}
