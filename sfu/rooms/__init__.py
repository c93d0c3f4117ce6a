"""What a media worker knows of its rooms, the inputs its cores take and the actions they return."""
