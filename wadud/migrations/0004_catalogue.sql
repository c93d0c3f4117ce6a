-- Catalogue: the next-free sweep's bookkeeping and the search's keyset indexes.

-- When next_free_at was last computed. A doctor with no free slot in the
-- horizon has next_free_at NULL; without this the periodic sweep would
-- recompute every such doctor on every round.
ALTER TABLE doctors ADD COLUMN next_free_checked_at timestamptz;

-- The sweep: published doctors whose earliest free slot has gone by.
CREATE INDEX doctors_sweep ON doctors (next_free_at NULLS FIRST) WHERE status = 'published';

-- Search sorts with keyset pagination on (sort key, id), with or without the
-- region/specialty prefix of the 0002 indexes. A doctor with no free slot
-- sorts last ('infinity'); an unrated doctor's average is 0.
CREATE INDEX doctors_by_next_free ON doctors ((coalesce(next_free_at, 'infinity')), id)
    WHERE status = 'published';
CREATE INDEX doctors_by_price ON doctors (fee_minor, id) WHERE status = 'published';
CREATE INDEX doctors_by_rating
    ON doctors (((rating_sum::float8 / greatest(rating_count, 1))), id)
    WHERE status = 'published';
CREATE INDEX doctors_spec_by_next_free
    ON doctors (specialty, (coalesce(next_free_at, 'infinity')), id)
    WHERE status = 'published';
CREATE INDEX doctors_spec_by_price ON doctors (specialty, fee_minor, id)
    WHERE status = 'published';
