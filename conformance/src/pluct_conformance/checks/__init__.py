"""Importing this package registers every check."""

from pluct_conformance.checks import auth, contract, hardening, races, schema, webhooks

__all__ = ["auth", "contract", "hardening", "races", "schema", "webhooks"]
