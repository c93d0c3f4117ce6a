"""What each subscriber gets: simulcast layers, bandwidth, dynacast and connection quality."""
