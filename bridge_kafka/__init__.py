"""Placeholder: built on `mesh`; see the open issue for this part (README, table at the top)."""
