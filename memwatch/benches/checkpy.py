# Workload for `memwatch check` against valgrind's memcheck: a real
# program (CPython) building 200,000 dict entries and a JSON round trip.
import json

d = {}
for i in range(200000):
    d["k%d" % i] = [i, str(i) * (i % 20), {"a": i}]
s = json.dumps(list(d.items())[:50000])
print(len(s), len(json.loads(s)))
