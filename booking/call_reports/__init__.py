"""Each video visit's call report: what goes in and reading it back
(:mod:`.storage`), the report folded from it (:mod:`.assembly`), the page
support reads (:mod:`.page`), and its part of data rights and retention
(:mod:`.privacy`). The API is :mod:`booking.api.call_reports`."""
