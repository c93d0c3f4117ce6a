-- The sites a clinic embeds its calls in (issue 39, docs/calls.md "Embedding
-- the call in a clinic's site"): each an origin, scheme://host[:port], as
-- browsers send it in the Origin header (wadud/origins.py normalises what a
-- client sends, so a lookup is plain equality). They may frame the clinic's
-- call pages (CSP frame-ancestors) and call the cross-origin endpoints
-- (POST /api/v1/check, /api/v1/calls/*) from the browser.
ALTER TABLE clinics
    ADD COLUMN allowed_origins text[] NOT NULL DEFAULT '{}'
        CHECK (cardinality(allowed_origins) <= 20);

-- Each preflight asks whether any clinic lists its origin (allowed_origins @> ARRAY[$1]).
CREATE INDEX clinics_allowed_origins ON clinics USING gin (allowed_origins);
