"""Loaded by every `moto_server` the local world starts (its PYTHONPATH names this directory).

Two of moto's operations cost time in proportion to everything the server holds, where AWS's
do not; with the bench's fleets (1,000 to 10,000 services: tens of thousands of ledger items
and sweep messages) the stand-in measured itself rather than skewguard. Each is narrowed here
without changing what it answers: results, order, paging and errors are moto's own, only the
time differs.

- DynamoDB `Query` on a table's own key: moto 5.2's `Table.query` gathers and sorts every item
  of the table, then keeps the queried partition's (one Query took ~1 s at 1,000 services, and
  moto answers one request at a time). Here the candidates are the partition's items alone:
  exactly those moto's own filter keeps.
- SQS `SendMessage(Batch)`, `ReceiveMessage` and `GetQueueAttributes`: moto computes all of a
  queue's attributes (counting its messages three times over) for every message sent or
  received and for every attribute asked, to read one or two of them (sending and receiving
  10,000 messages took minutes). Here those calls compute a queue's attributes once per call:
  what they read of them (retention period, deduplication) does not change during a call, and
  the counts `GetQueueAttributes` answers are one snapshot, as AWS's approximate counts are.

moto's output says what was done: "DynamoDB Query reads its partition alone" and "SQS computes
a queue's attributes once per call", or, where moto's internals differ from what this expects,
"... not narrowed: <why>" and that part is left as it is (the world still works, only slower).
"""

import inspect
import sys
import threading


def _narrow_dynamodb_query():
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


def _narrow_sqs_attributes():
    try:
        from moto.sqs.models import Queue, SQSBackend
    except Exception as e:
        return f"moto.sqs.models not importable ({e})"
    if not isinstance(getattr(Queue, "attributes", None), property):
        return "Queue.attributes is not a property"
    operations = ["send_message", "send_message_batch", "receive_message", "get_queue_attributes"]
    missing = [name for name in operations if not callable(getattr(SQSBackend, name, None))]
    if missing:
        return f"SQSBackend lacks {missing}"

    # While one of `operations` runs (on this thread): each queue's attributes, computed once.
    call = threading.local()
    attributes = Queue.attributes

    def attributes_once_per_call(self):
        computed = getattr(call, "computed", None)
        if computed is None:
            return attributes.fget(self)
        for queue, value in computed:
            if queue is self:
                return dict(value)  # callers may change what they get
        value = attributes.fget(self)
        computed.append((self, value))
        return dict(value)

    def one_call(operation):
        def run(self, *args, **kwargs):
            outermost = getattr(call, "computed", None) is None
            if outermost:
                call.computed = []
            try:
                return operation(self, *args, **kwargs)
            finally:
                if outermost:
                    call.computed = None

        return run

    Queue.attributes = property(attributes_once_per_call)
    for name in operations:
        setattr(SQSBackend, name, one_call(getattr(SQSBackend, name)))
    return None


for _done, _narrowing in [
    ("DynamoDB Query reads its partition alone", _narrow_dynamodb_query),
    ("SQS computes a queue's attributes once per call", _narrow_sqs_attributes),
]:
    _problem = _narrowing()
    if _problem is None:
        print(f"skewguard world: {_done}", file=sys.stderr)
    else:
        print(f"skewguard world: {_done.split(' ')[0]} {_done.split(' ')[1]} not narrowed: {_problem}", file=sys.stderr)
