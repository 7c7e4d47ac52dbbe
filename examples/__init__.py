"""Example user models for ``--model MODULE:FACTORY`` (docs/models.md); tests/test_user_models.py runs them."""
