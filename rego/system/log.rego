# OPA decision-log policy: the service's revision poll (GET /v1/data/extauthz, twice a second)
# is not a decision, so it is kept out of the decision log.
package system.log

drop if input.path == "extauthz"
