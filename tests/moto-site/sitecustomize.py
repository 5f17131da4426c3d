"""Loaded by every `moto_server` the local world starts (its PYTHONPATH names this directory).

Some of moto's operations cost time in proportion to everything the server holds, where AWS's
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
  10,000 messages took minutes). Here those calls compute a queue's attributes once per call,
  sends and receives without the counts (which they compute and throw away): what they read
  (retention period, deduplication) does not change during a call, and the counts
  `GetQueueAttributes` answers are one snapshot, as AWS's approximate counts are.
- SQS `ReceiveMessage` is not atomic in moto: it picks the visible messages, then marks them
  received, so two consumers receiving at once can both take a message (the bench saw services
  swept twice). Here receives run one at a time, as SQS hands a message to one receiver within
  its visibility timeout.

moto's output says what was done ("DynamoDB Query reads its partition alone", "SQS computes a
queue's attributes once per call and receives one call at a time"), or, where moto's internals
differ from what this expects, "... not narrowed: <why>" and that part is left as it is (the
world still works, only slower).
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
    counts = [
        "approximate_number_of_messages",
        "approximate_number_of_messages_delayed",
        "approximate_number_of_messages_not_visible",
    ]
    if not isinstance(getattr(Queue, "attributes", None), property) or not all(
        isinstance(getattr(Queue, name, None), property) for name in counts
    ):
        return "Queue.attributes or its message counts are not properties"
    # Operations that read a queue's attributes but none of its message counts.
    uncounted = ["send_message", "send_message_batch", "receive_message"]
    operations = uncounted + ["get_queue_attributes"]
    missing = [name for name in operations if not callable(getattr(SQSBackend, name, None))]
    if missing:
        return f"SQSBackend lacks {missing}"

    # While one of `operations` runs (on this thread): each queue's attributes, computed once;
    # while one of `uncounted` runs, without counting the queue's messages.
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

    def counted_unless_uncounted(count):
        def get(self):
            if getattr(call, "uncounted", False):
                return 0  # computed by `attributes`, read by nobody
            return count.fget(self)

        return property(get)

    def one_call(operation, uncounted):
        def run(self, *args, **kwargs):
            outermost = getattr(call, "computed", None) is None
            if outermost:
                call.computed = []
                call.uncounted = uncounted
            try:
                return operation(self, *args, **kwargs)
            finally:
                if outermost:
                    call.computed = None
                    call.uncounted = False

        return run

    Queue.attributes = property(attributes_once_per_call)
    for name in counts:
        setattr(Queue, name, counted_unless_uncounted(getattr(Queue, name)))
    for name in operations:
        setattr(SQSBackend, name, one_call(getattr(SQSBackend, name), name in uncounted))

    # moto's ReceiveMessage picks visible messages, then marks them received, with no lock:
    # two consumers receiving at once can both take one message, which SQS does not do within
    # a visibility timeout. One receive at a time, as a queue hands each message to one
    # receiver. (A long-polling receive would hold the lock while it waits; the world's
    # receivers do not long-poll.)
    receiving = threading.Lock()
    receive = SQSBackend.receive_message

    def receive_message(self, *args, **kwargs):
        with receiving:
            return receive(self, *args, **kwargs)

    SQSBackend.receive_message = receive_message
    return None


for _done, _narrowing in [
    ("DynamoDB Query reads its partition alone", _narrow_dynamodb_query),
    ("SQS computes a queue's attributes once per call and receives one call at a time", _narrow_sqs_attributes),
]:
    _problem = _narrowing()
    if _problem is None:
        print(f"skewguard world: {_done}", file=sys.stderr)
    else:
        print(f"skewguard world: {_done.split(' ')[0]} {_done.split(' ')[1]} not narrowed: {_problem}", file=sys.stderr)
