"""mic: agent-first version control (sessions with goal, conversation, decisions and changes)."""
