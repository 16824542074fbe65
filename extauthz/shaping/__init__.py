"""Response shaping: the plan the decision hands to Envoy, and the ext_proc processor that
enforces it on the model server's answer (rego/README.md, "Response plan")."""
