"""The store's format metadata: a few named strings (``format`` among them)."""

from __future__ import annotations

from cas.store.env import Env, Txn


class Meta:
    """The meta keys of the store, :attr:`cas.store.Store.meta` (sharing its Env)."""

    def __init__(self, env: Env) -> None:
        self._env = env

    def get(self, key: str) -> str | None:
        value = self._env.read(lambda txn: txn.get(key.encode(), db=self._env.meta))
        return None if value is None else bytes(value).decode()

    def set(self, key: str, value: str | None) -> None:
        """Set ``key`` to ``value``; None deletes it."""

        def go(txn: Txn) -> None:
            if value is None:
                txn.delete(key.encode(), db=self._env.meta)
            else:
                txn.put(key.encode(), value.encode(), db=self._env.meta)

        self._env.write(go)
