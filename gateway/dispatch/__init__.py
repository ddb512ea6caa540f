"""From a routed request to a response: the backends and the service that drives them."""
