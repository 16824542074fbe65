"""extauthz: an Envoy ext_authz policy service for ML inference endpoints."""

__version__ = "0.1.0"
