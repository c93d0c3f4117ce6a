"""A room as this replica runs it: its core with its timer, media lane and
subscribers, and what the room leaves beside the call: its recording's rows,
its webhook events, its call report."""
