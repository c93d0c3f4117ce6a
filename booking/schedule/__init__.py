"""A doctor's schedule: when they can be booked.

:mod:`.availability` and :mod:`.free_time` are the pure cores (the weekly
windows and date overrides; the free slots they offer around busy time);
:mod:`.slots` reads them from PostgreSQL and keeps ``doctors.next_free_at``;
:mod:`.cache` remembers the availabilities this process has built. Nothing
here imports the rest of booking beyond its errors and lifecycle states.
"""
