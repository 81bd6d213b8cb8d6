// The projection adapter and the View wrapper, over an in-memory view.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { utf8 } from '../src/json.js';
import { PluginError, View, compareKeys, createProjectionExports, setLogSink } from '../src/kiln.js';
import { MemoryView, projectionTest } from '../src/testing.js';

/** A row per counter under its id, and `_total` across all of them. */
const counters = {
  subscriptions: ['Incremented', 'Reset'],
  handle(event, view) {
    const row = view.get(event.aggregateId) ?? { value: 0 };
    if (event.type === 'Incremented') {
      if (event.data.by < 0) throw new PluginError(`negative increment at position ${event.position}`);
      if (event.data.by === 13) throw new Error('unlucky');
      row.value += event.data.by;
      view.put('_total', (view.get('_total') ?? 0) + event.data.by);
    } else {
      row.value = 0;
    }
    if (row.value === 0) view.delete(event.aggregateId);
    else view.put(event.aggregateId, row);
  },
};

describe('createProjectionExports', () => {
  it('exports the subscriptions and folds batches into the view', () => {
    const test = projectionTest(counters);
    assert.deepEqual(test.subscriptions, ['Incremented', 'Reset']);
    const batch = test.given([
      { streamId: 'counter-a', type: 'Incremented', data: { by: 2 } },
      { streamId: 'counter-b', type: 'Incremented', data: { by: 5 } },
      { streamId: 'counter-a', type: 'Incremented', data: { by: 1 } },
    ]);
    assert.deepEqual(batch, { ok: true, error: null, logs: [] });
    assert.deepEqual(test.view.rows(), { _total: 8, a: { value: 3 }, b: { value: 5 } });
    // One read and one write per distinct key, writes in key order.
    assert.deepEqual(test.view.calls, { get: 3, put: 3, delete: 0, scan: 0 });
    assert.deepEqual([...test.view.data.keys()], ['_total', 'a', 'b']);

    test.given([{ streamId: 'counter-b', type: 'Reset', data: {} }]);
    assert.equal(test.view.row('b'), undefined);
    assert.equal(test.view.row('_total'), 8);
  });

  it('hands over events with their envelope', () => {
    const seen = [];
    const test = projectionTest({
      handleBatch(events) {
        for (const event of events) seen.push({ ...event, metadata: event.metadata });
      },
    });
    assert.deepEqual(test.subscriptions, []);
    test.given([{ streamId: 'order-7', type: 'Placed', data: { n: 9007199254740993n }, metadata: { user: 'ann' } }]);
    assert.deepEqual(seen, [
      {
        type: 'Placed',
        data: { n: 9007199254740993n },
        schema: 1,
        streamId: 'order-7',
        aggregateId: '7',
        version: 1,
        position: 1,
        recordedAtMs: 1700000000000,
        metadata: { user: 'ann' },
      },
    ]);
  });

  it('fails the batch with a PluginError, and writes nothing', () => {
    const test = projectionTest(counters, { rows: { _total: 1 } });
    const batch = test.given([
      { streamId: 'counter-a', type: 'Incremented', data: { by: 2 } },
      { streamId: 'counter-a', type: 'Incremented', data: { by: -1 } },
    ]);
    assert.deepEqual(batch, { ok: false, error: 'negative increment at position 2', logs: [] });
    assert.deepEqual(test.view.rows(), { _total: 1 });
  });

  it('traps on any other error, after logging it', () => {
    const test = projectionTest(counters);
    assert.throws(
      () => test.given([{ streamId: 'counter-a', type: 'Incremented', data: { by: 13 } }]),
      (error) => {
        assert.equal(error.message, 'unlucky');
        assert.equal(error.kilnLogs.length, 1);
        assert.match(error.kilnLogs[0].message, /^handleBatch failed: Error: unlucky\n/);
        return true;
      },
    );
    assert.throws(() => createProjectionExports({ subscriptions: 'x', handle() {} }, new MemoryView()), /array of event types/);
    assert.throws(() => createProjectionExports({}, new MemoryView()), /neither `handleBatch/);
  });
});

describe('View', () => {
  it('reads through, writes back, and skips writes that change nothing', () => {
    const store = new MemoryView({ a: { n: 1 }, b: 2 });
    const view = new View(store);
    assert.deepEqual(view.get('a'), { n: 1 });
    // A value handed out is a copy: changing it changes nothing stored.
    view.get('a').n = 99;
    assert.deepEqual(view.get('a'), { n: 1 });
    assert.equal(view.get('missing'), undefined);
    assert.equal(view.has('missing'), false);
    assert.equal(view.has('b'), true);
    assert.equal(store.calls.get, 3);
    view.put('a', { n: 1 }); // the same value: no change
    view.put('c', 3n ** 40n);
    view.put('c', 3);
    view.delete('b');
    view.delete('missing');
    assert.equal(view.get('b'), undefined);
    assert.deepEqual(store.calls, { get: 3, put: 0, delete: 0, scan: 0 });
    view.flush();
    // `missing` was read as absent and deleted: no change, no call.
    assert.deepEqual(store.calls, { get: 3, put: 1, delete: 1, scan: 0 });
    assert.deepEqual(store.rows(), { a: { n: 1 }, c: 3 });
  });

  it('scans its own writes, in key order, page by page', () => {
    const store = new MemoryView({ 'acc-1': 1, 'acc-3': 3, other: 0 });
    const view = new View(store);
    view.put('acc-2', 2);
    view.delete('acc-3');
    assert.deepEqual(view.scan('acc-'), [
      { key: 'acc-1', value: 1 },
      { key: 'acc-2', value: 2 },
    ]);
    assert.deepEqual(view.scan('acc-', { after: 'acc-1', limit: 1 }), [{ key: 'acc-2', value: 2 }]);
    assert.deepEqual(view.scan('', { limit: 0 }), []);
    assert.throws(() => view.scan('', { limit: -1 }), /scan limit/);
    assert.throws(() => view.put(1, 'x'), /a view key must be a string/);
  });

  it('reports a row that is not JSON as a PluginError', () => {
    const store = new MemoryView();
    store.data.set('bad', utf8('{'));
    assert.throws(() => new View(store).get('bad'), PluginError);
  });

  it('orders keys by code point, as the host does', () => {
    const keys = ['b', '\u{1f600}', '\uffff', 'a', ''];
    assert.deepEqual(keys.sort(compareKeys), ['', 'a', 'b', '\uffff', '\u{1f600}']);
  });
});

describe('log', () => {
  it('never fails the call', async () => {
    const { log } = await import('../src/kiln.js');
    const previous = setLogSink(() => {
      throw new Error('sink down');
    });
    try {
      log.info('still fine');
    } finally {
      setLogSink(previous);
    }
  });
});
