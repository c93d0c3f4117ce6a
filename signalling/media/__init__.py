"""Where a room's media runs: the media workers a room is placed on, one site
per region and the relays between them, the lane its media calls go through,
and the workers as admins see them."""
