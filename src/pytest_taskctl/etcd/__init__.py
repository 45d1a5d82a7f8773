"""The etcd layer: settings, the gateway client, watched views, the batched writer,
leases, the public :class:`StateStore` and an embedded server for one machine."""
