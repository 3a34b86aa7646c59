"""Pure-torch reference implementations: readable, device-agnostic, and the test oracle."""
