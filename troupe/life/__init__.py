"""What personas live through: news, goals, posts (the life loop's activities)."""
