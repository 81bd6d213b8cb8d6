-- The streams the commits in ($1, $2] touched, each with its latest version
-- there (the follower's record of what other hosts wrote).
SELECT stream_id, max(version) FROM events
WHERE position > $1 AND position <= $2
GROUP BY stream_id
