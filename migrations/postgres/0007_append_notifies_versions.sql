-- kiln_append (0005) with a notification that carries what the batch did:
-- the positions it took and each stream's new version. Hosts following the
-- log kept their record of other hosts' stream versions (store/postgres/
-- follower.rs) by reading the events of every notified commit back, two
-- queries per commit per host, so the reads grew with the square of the
-- number of hosts; now a notification is enough. The function is otherwise
-- unchanged (see 0005 for its rules).

CREATE OR REPLACE FUNCTION kiln_append(
    r_stream text[], r_expect_kind smallint[], r_expect bigint[],
    r_key text[], r_request_hash text[], r_window_start bigint[], r_events integer[],
    e_type text[], e_schema bigint[], e_data text[], e_metadata text[],
    now_us bigint, channel text, origin text,
    OUT outcomes smallint[], OUT versions bigint[], OUT first_positions bigint[],
    OUT hashes bytea[], OUT recorded_at bigint, OUT tail_position bigint,
    OUT k_request_hash text[], OUT k_stream_id text[], OUT k_version bigint[],
    OUT k_first_position bigint[], OUT k_event_count bigint[], OUT k_created_at bigint[]
) LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    t_position bigint;
    t_hash bytea;
    t_recorded bigint;
    n integer := coalesce(array_length(r_stream, 1), 0);
    e integer := 1;      -- index of request i's first event
    cnt integer;
    actual bigint;
    ok boolean;
    h bytea;
    s bytea;
    -- Versions and keys as this batch leaves them.
    batch_versions jsonb := '{}';
    batch_keys jsonb := '{}';
    entry record;
    payload text;
    -- What is written.
    w_position bigint[] := '{}';
    w_stream text[] := '{}';
    w_version bigint[] := '{}';
    w_type text[] := '{}';
    w_schema bigint[] := '{}';
    w_data text[] := '{}';
    w_metadata text[] := '{}';
    w_hash bytea[] := '{}';
    kw_key text[] := '{}';
    kw_request_hash text[] := '{}';
    kw_stream text[] := '{}';
    kw_version bigint[] := '{}';
    kw_first bigint[] := '{}';
    kw_count bigint[] := '{}';
    kw_created bigint[] := '{}';
BEGIN
    -- Every later statement of this function takes a fresh snapshot, so
    -- once the lock is held it sees every append committed before.
    SELECT lt.position, lt.hash, lt.recorded_at INTO t_position, t_hash, t_recorded
    FROM log_tail lt FOR UPDATE;
    recorded_at := greatest(now_us, t_recorded);
    outcomes := array_fill(0::smallint, ARRAY[n]);
    versions := array_fill(0::bigint, ARRAY[n]);
    first_positions := array_fill(NULL::bigint, ARRAY[n]);
    hashes := array_fill(NULL::bytea, ARRAY[greatest(coalesce(array_length(e_type, 1), 0), 0)]);
    k_request_hash := array_fill(NULL::text, ARRAY[n]);
    k_stream_id := array_fill(NULL::text, ARRAY[n]);
    k_version := array_fill(NULL::bigint, ARRAY[n]);
    k_first_position := array_fill(NULL::bigint, ARRAY[n]);
    k_event_count := array_fill(NULL::bigint, ARRAY[n]);
    k_created_at := array_fill(NULL::bigint, ARRAY[n]);
    FOR i IN 1..n LOOP
        cnt := r_events[i];
        IF r_key[i] IS NOT NULL THEN
            IF batch_keys ? r_key[i] THEN
                SELECT x.request_hash, x.stream_id, x.version, x.first_position,
                       x.event_count, x.created_at
                INTO entry
                FROM jsonb_to_record(batch_keys -> r_key[i]) AS x (
                    request_hash text, stream_id text, version bigint,
                    first_position bigint, event_count bigint, created_at bigint);
            ELSE
                SELECT k.request_hash, k.stream_id, k.version, k.first_position,
                       k.event_count, k.created_at
                INTO entry
                FROM idempotency_keys k WHERE k.key = r_key[i];
            END IF;
            IF FOUND AND entry.created_at >= r_window_start[i] THEN
                outcomes[i] := 2;
                k_request_hash[i] := entry.request_hash;
                k_stream_id[i] := entry.stream_id;
                k_version[i] := entry.version;
                k_first_position[i] := entry.first_position;
                k_event_count[i] := entry.event_count;
                k_created_at[i] := entry.created_at;
                e := e + cnt;
                CONTINUE;
            END IF;
        END IF;
        IF batch_versions ? r_stream[i] THEN
            actual := (batch_versions ->> r_stream[i])::bigint;
        ELSE
            actual := coalesce((SELECT ev.version FROM events ev WHERE ev.stream_id = r_stream[i]
                                ORDER BY ev.version DESC LIMIT 1), 0);
        END IF;
        ok := CASE r_expect_kind[i]
            WHEN 0 THEN true
            WHEN 1 THEN actual = 0
            ELSE actual = r_expect[i]
        END;
        IF NOT ok THEN
            outcomes[i] := 1;
            versions[i] := actual;
            e := e + cnt;
            CONTINUE;
        END IF;
        FOR j IN 0..cnt - 1 LOOP
            t_position := t_position + 1;
            s := convert_to(r_stream[i], 'UTF8');
            h := sha256(
                t_hash
                || int8send(t_position)
                || int8send(octet_length(s)::bigint) || s
                || int8send(actual + 1 + j)
                || int8send(octet_length(convert_to(e_type[e + j], 'UTF8'))::bigint)
                || convert_to(e_type[e + j], 'UTF8')
                || substring(int8send(e_schema[e + j]) FROM 5 FOR 4)
                || int8send(octet_length(convert_to(e_data[e + j], 'UTF8'))::bigint)
                || convert_to(e_data[e + j], 'UTF8')
                || int8send(octet_length(convert_to(e_metadata[e + j], 'UTF8'))::bigint)
                || convert_to(e_metadata[e + j], 'UTF8')
                || int8send(recorded_at));
            t_hash := h;
            t_recorded := recorded_at;
            hashes[e + j] := h;
            w_position := w_position || t_position;
            w_stream := w_stream || r_stream[i];
            w_version := w_version || (actual + 1 + j);
            w_type := w_type || e_type[e + j];
            w_schema := w_schema || e_schema[e + j];
            w_data := w_data || e_data[e + j];
            w_metadata := w_metadata || e_metadata[e + j];
            w_hash := w_hash || h;
        END LOOP;
        versions[i] := actual + cnt;
        batch_versions := batch_versions || jsonb_build_object(r_stream[i], actual + cnt);
        IF cnt > 0 THEN
            first_positions[i] := t_position - cnt + 1;
        END IF;
        IF r_key[i] IS NOT NULL THEN
            batch_keys := batch_keys || jsonb_build_object(r_key[i], jsonb_build_object(
                'request_hash', r_request_hash[i], 'stream_id', r_stream[i],
                'version', actual + cnt, 'first_position', first_positions[i],
                'event_count', cnt, 'created_at', recorded_at));
            kw_key := kw_key || r_key[i];
            kw_request_hash := kw_request_hash || r_request_hash[i];
            kw_stream := kw_stream || r_stream[i];
            kw_version := kw_version || (actual + cnt);
            kw_first := kw_first || first_positions[i];
            kw_count := kw_count || cnt::bigint;
            kw_created := kw_created || recorded_at;
        END IF;
        e := e + cnt;
    END LOOP;
    IF array_length(w_position, 1) > 0 THEN
        INSERT INTO events
            (position, stream_id, version, event_type, schema, data, metadata, recorded_at, hash)
        SELECT p, st, v, ty, sc, d, m, recorded_at, hh
        FROM UNNEST(w_position, w_stream, w_version, w_type, w_schema, w_data, w_metadata, w_hash)
            AS u (p, st, v, ty, sc, d, m, hh);
        UPDATE log_tail SET position = t_position, hash = t_hash, recorded_at = t_recorded;
        -- "<origin> <tail> <tail before this batch>[ <{stream: version}>]":
        -- other hosts learn the new versions from the notification itself,
        -- without reading the log; a list too long for a notification is
        -- left out, and they read it instead.
        payload := origin || ' ' || t_position::text || ' '
            || (t_position - array_length(w_position, 1))::text;
        IF octet_length(batch_versions::text) <= 7000 THEN
            payload := payload || ' ' || batch_versions::text;
        END IF;
        PERFORM pg_notify(channel, payload);
    END IF;
    IF array_length(kw_key, 1) > 0 THEN
        -- A key claimed twice in this batch is written once, as last claimed
        -- (the second claim only happens after the first one's window).
        INSERT INTO idempotency_keys
            (key, request_hash, stream_id, version, first_position, event_count, created_at)
        SELECT DISTINCT ON (k) k, rh, st, v, fp, c, ca
        FROM UNNEST(kw_key, kw_request_hash, kw_stream, kw_version, kw_first, kw_count, kw_created)
            WITH ORDINALITY AS u (k, rh, st, v, fp, c, ca, o)
        ORDER BY k, o DESC
        ON CONFLICT (key) DO UPDATE SET
            request_hash = excluded.request_hash,
            stream_id = excluded.stream_id,
            version = excluded.version,
            first_position = excluded.first_position,
            event_count = excluded.event_count,
            created_at = excluded.created_at;
    END IF;
    tail_position := t_position;
END;
$$;
