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
- SQS `SendMessage` / `SendMessageBatch`: for every message sent, moto computes all of the
  queue's attributes to read one (`ContentBasedDeduplication`), counting the queue's messages
  three times over (sending 10,000 messages took minutes). Here, while a message is being sent,
  those counts (`ApproximateNumberOf*`, which the send path computes and throws away) are not
  computed; `GetQueueAttributes` and everything else count as before.

moto's output says what was done: "DynamoDB Query reads its partition alone" and "SQS sends
skip the queue's message counts", or, where moto's internals differ from what this expects,
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


def _narrow_sqs_send():
    try:
        from moto.sqs.models import Queue, SQSBackend
    except Exception as e:
        return f"moto.sqs.models not importable ({e})"
    counts = [
        "approximate_number_of_messages",
        "approximate_number_of_messages_delayed",
        "approximate_number_of_messages_not_visible",
    ]
    if not all(isinstance(getattr(Queue, name, None), property) for name in counts):
        return "Queue's message counts are not properties"
    if not callable(getattr(SQSBackend, "send_message", None)):
        return "SQSBackend.send_message is missing"

    sending = threading.local()

    def while_not_sending(count):
        def get(self):
            if getattr(sending, "now", False):
                return 0
            return count.fget(self)

        return property(get)

    for name in counts:
        setattr(Queue, name, while_not_sending(getattr(Queue, name)))
    send = SQSBackend.send_message

    def send_message(self, *args, **kwargs):
        sending.now = True
        try:
            return send(self, *args, **kwargs)
        finally:
            sending.now = False

    SQSBackend.send_message = send_message
    return None


for _done, _narrowing in [
    ("DynamoDB Query reads its partition alone", _narrow_dynamodb_query),
    ("SQS sends skip the queue's message counts", _narrow_sqs_send),
]:
    _problem = _narrowing()
    if _problem is None:
        print(f"skewguard world: {_done}", file=sys.stderr)
    else:
        print(f"skewguard world: {_done.split(' ')[0]} {_done.split(' ')[1]} not narrowed: {_problem}", file=sys.stderr)
