"""The WebSocket gateway: authenticated, priority-aware real-time streaming built on `mesh`
(see docs/gateway.md). Entry points: `mesh gateway`, `mesh bench gateway`."""
