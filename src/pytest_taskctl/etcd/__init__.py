"""etcd"""
