"""Loaded by every `moto_server` the local world starts (its PYTHONPATH names this directory).

It makes moto's DynamoDB `Query` on a table's own key read one partition, as DynamoDB does.
moto 5.2's `Table.query` (no index) gathers and sorts every item of the table and then keeps the
queried partition's: each Query costs time in proportion to the whole table. With the bench's
fleets (1,000 services: tens of thousands of items) one Query took ~1 s, moto answers requests
one at a time, and everything queued behind it, so the stand-in measured itself rather than the
reconciler. Here the candidates are taken from the partition alone: exactly the items moto's
own filter keeps, so results, order, paging and errors are unchanged; only the time differs.

moto's output says which: "DynamoDB Query reads its partition alone", or, if moto's internals
differ from what this expects, "... not narrowed ..." and nothing is patched (the world still
works; only Query keeps its cost in table size).
"""

import inspect
import sys
import threading


def _install():
    try:
        from moto.dynamodb.models.table import Table
    except Exception as e:  # moto absent or reorganised
        return f"moto.dynamodb.models.table.Table not importable ({e})"
    parameters = list(inspect.signature(Table.query).parameters)
    if parameters[:2] != ["self", "hash_key"] or "index_name" not in parameters:
        return f"Table.query has an unexpected signature {parameters}"
    index_position = parameters.index("index_name") - 2  # among the arguments after hash_key

    partition = threading.local()
    all_items = Table.all_items
    query = Table.query

    def partition_items(self):
        hint = getattr(partition, "of", None)
        if hint is None or hint[0] is not self:
            return all_items(self)
        items = getattr(self, "items", None)
        found = items.get(hint[1]) if isinstance(items, dict) else None
        if found is None:
            return []
        return list(found.values()) if self.range_key_attr else [found]

    def partition_query(self, hash_key, *args, **kwargs):
        if len(args) > index_position:
            index_name = args[index_position]
        else:
            index_name = kwargs.get("index_name")
        if index_name or hash_key is None:
            return query(self, hash_key, *args, **kwargs)
        partition.of = (self, hash_key)
        try:
            return query(self, hash_key, *args, **kwargs)
        finally:
            partition.of = None

    Table.all_items = partition_items
    Table.query = partition_query
    return None


_problem = _install()
if _problem is None:
    print("skewguard world: DynamoDB Query reads its partition alone", file=sys.stderr)
else:
    print(f"skewguard world: DynamoDB Query not narrowed to its partition: {_problem}", file=sys.stderr)
