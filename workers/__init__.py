"""Worker classes that ship with the orchestrator."""
