-- The feedback store of tests/data/feedback_store_v6.db as the store of commit 47de697 (schema_version 6,
-- before Alembic) makes it on PostgreSQL; see make_feedback_store_v6.py. One statement per block.
CREATE TABLE meta (
	key VARCHAR(64) NOT NULL, 
	value TEXT NOT NULL, 
	PRIMARY KEY (key)
);

CREATE TABLE users (
	id SERIAL NOT NULL, 
	name VARCHAR(128) NOT NULL, 
	role VARCHAR(16) NOT NULL, 
	pw_hash VARCHAR(256) NOT NULL, 
	session_epoch INTEGER NOT NULL, 
	active BOOLEAN NOT NULL, 
	created_at FLOAT NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (name)
);

CREATE TABLE projects (
	id SERIAL NOT NULL, 
	name VARCHAR(128) NOT NULL, 
	guidelines TEXT NOT NULL, 
	guideline_version INTEGER NOT NULL, 
	tags TEXT NOT NULL, 
	candidates_per_item INTEGER NOT NULL, 
	overlap INTEGER NOT NULL, 
	assign_batch INTEGER NOT NULL, 
	created_at FLOAT NOT NULL, 
	claim_ttl_minutes INTEGER DEFAULT 1440 NOT NULL, 
	uncertain_first BOOLEAN DEFAULT false NOT NULL, 
	task VARCHAR(16) DEFAULT 'rank' NOT NULL, 
	baseline VARCHAR(512) DEFAULT '' NOT NULL, 
	challenger VARCHAR(512) DEFAULT '' NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (name)
);

CREATE TABLE items (
	id SERIAL NOT NULL, 
	project_id INTEGER NOT NULL, 
	prompt TEXT NOT NULL, 
	prompt_hash VARCHAR(64) NOT NULL, 
	source VARCHAR(256) NOT NULL, 
	n_assigned INTEGER NOT NULL, 
	created_at FLOAT NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (project_id, prompt_hash), 
	FOREIGN KEY(project_id) REFERENCES projects (id)
);

CREATE TABLE jobs (
	id SERIAL NOT NULL, 
	project_id INTEGER NOT NULL, 
	kind VARCHAR(32) NOT NULL, 
	params TEXT NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	done INTEGER NOT NULL, 
	total INTEGER NOT NULL, 
	message TEXT NOT NULL, 
	created_by INTEGER NOT NULL, 
	created_at FLOAT NOT NULL, 
	updated_at FLOAT NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(project_id) REFERENCES projects (id), 
	FOREIGN KEY(created_by) REFERENCES users (id)
);

CREATE TABLE candidates (
	id SERIAL NOT NULL, 
	item_id INTEGER NOT NULL, 
	text TEXT NOT NULL, 
	text_hash VARCHAR(64) NOT NULL, 
	model VARCHAR(512) NOT NULL, 
	generation TEXT NOT NULL, 
	source VARCHAR(32) NOT NULL, 
	created_at FLOAT NOT NULL, 
	model_path TEXT DEFAULT '' NOT NULL, 
	model_sha256 VARCHAR(64) DEFAULT '' NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (item_id, text_hash), 
	FOREIGN KEY(item_id) REFERENCES items (id)
);

CREATE INDEX ix_candidates_item_id ON candidates (item_id);

CREATE TABLE assignments (
	id SERIAL NOT NULL, 
	item_id INTEGER NOT NULL, 
	user_id INTEGER NOT NULL, 
	assigned_at FLOAT NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (item_id, user_id), 
	FOREIGN KEY(item_id) REFERENCES items (id), 
	FOREIGN KEY(user_id) REFERENCES users (id)
);

CREATE INDEX ix_assignments_user_id ON assignments (user_id);

CREATE TABLE released_claims (
	id SERIAL NOT NULL, 
	item_id INTEGER NOT NULL, 
	user_id INTEGER NOT NULL, 
	assigned_at FLOAT NOT NULL, 
	released_at FLOAT NOT NULL, 
	reason VARCHAR(16) NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (item_id, user_id), 
	FOREIGN KEY(item_id) REFERENCES items (id), 
	FOREIGN KEY(user_id) REFERENCES users (id)
);

CREATE TABLE gold_items (
	item_id INTEGER NOT NULL, 
	ordering TEXT NOT NULL, 
	updated_at FLOAT NOT NULL, 
	PRIMARY KEY (item_id), 
	FOREIGN KEY(item_id) REFERENCES items (id)
);

CREATE TABLE judgments (
	id SERIAL NOT NULL, 
	item_id INTEGER NOT NULL, 
	user_id INTEGER NOT NULL, 
	created_at FLOAT NOT NULL, 
	payload TEXT NOT NULL, 
	guideline_version INTEGER NOT NULL, 
	revision INTEGER NOT NULL, 
	submission_key VARCHAR(64) NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (user_id, item_id, revision), 
	FOREIGN KEY(item_id) REFERENCES items (id), 
	FOREIGN KEY(user_id) REFERENCES users (id), 
	UNIQUE (submission_key)
);

CREATE INDEX ix_judgments_item ON judgments (item_id);

CREATE TABLE drafts (
	user_id INTEGER NOT NULL, 
	item_id INTEGER NOT NULL, 
	payload TEXT NOT NULL, 
	updated_at FLOAT NOT NULL, 
	PRIMARY KEY (user_id, item_id), 
	FOREIGN KEY(user_id) REFERENCES users (id), 
	FOREIGN KEY(item_id) REFERENCES items (id)
);

CREATE TABLE candidate_scores (
	candidate_id INTEGER NOT NULL, 
	score FLOAT NOT NULL, 
	reward_model TEXT NOT NULL, 
	weights_sha256 VARCHAR(64) NOT NULL, 
	scored_at FLOAT NOT NULL, 
	PRIMARY KEY (candidate_id), 
	FOREIGN KEY(candidate_id) REFERENCES candidates (id)
);

INSERT INTO meta (key, value) VALUES ('last_project:2', '1');

INSERT INTO meta (key, value) VALUES ('schema_version', '6');

INSERT INTO meta (key, value) VALUES ('secret', '0b8f6919b2cbb67243a1efd51a16aec60f772962890bcc681ae2f153504c3fd8');

INSERT INTO projects (id, name, guidelines, guideline_version, tags, candidates_per_item, overlap, assign_batch, created_at, claim_ttl_minutes, uncertain_first, task, baseline, challenger) VALUES (1, 'support', 'Rank them. Ünïcode kept: ✓', 2, '["wrong", "rude", "other"]', 4, 2, 1, 1796229008.7018983, 60, true, 'rank', '', '');

INSERT INTO projects (id, name, guidelines, guideline_version, tags, candidates_per_item, overlap, assign_batch, created_at, claim_ttl_minutes, uncertain_first, task, baseline, challenger) VALUES (2, 'eval', 'Two answers to the same question, in a random order: you are not told which model wrote which.
**Rank** the better answer 1 and the other 2, or give both rank 1 when neither is better.
Tick **All unacceptable** when neither answer could be given to a customer as it stands.
**Tag** every problem you see in an answer.
', 1, '["factual error", "unsafe", "policy violation", "off tone", "hallucination", "other"]', 2, 2, 5, 1796229010.072927, 1440, false, 'head_to_head', 'sft-v1', 'dpo-v2');

SELECT setval(pg_get_serial_sequence('projects', 'id'), (SELECT max(id) FROM projects));

INSERT INTO users (id, name, role, pw_hash, session_epoch, active, created_at) VALUES (1, 'boss', 'admin', 'scrypt$32768$8$1$895bd0674b9b96a459fc0b8759d54865$c73b7247345edb23ac51420837fcff0d467a39cc7c096ce05ffaa617506d877d', 0, true, 1796229005.8063138);

INSERT INTO users (id, name, role, pw_hash, session_epoch, active, created_at) VALUES (2, 'ann', 'annotator', 'scrypt$32768$8$1$03d5176a0aec80c34962dbb2821df843$2dceb705029a267e932ff414bf02ff4b80222466ebc8bccf4c930179b49b9a6b', 0, true, 1796229006.7905579);

INSERT INTO users (id, name, role, pw_hash, session_epoch, active, created_at) VALUES (3, 'bob', 'annotator', 'scrypt$32768$8$1$744d18030d7fc2bbf2fa2751b5b2fd76$8f61c2f735b1affd935d35b5dd7cfbab1902ace1d0cedfe7016566a5208ade60', 0, true, 1796229007.817371);

INSERT INTO users (id, name, role, pw_hash, session_epoch, active, created_at) VALUES (4, 'carl', 'annotator', 'scrypt$32768$8$1$1d17d1ba28acbdfe4f5e9244011cd60d$a249e41e09ece0ae92264f632dd2368cae620642b4c84b983c187b6dc4d1da35', 1, false, 1796229008.5918906);

SELECT setval(pg_get_serial_sequence('users', 'id'), (SELECT max(id) FROM users));

INSERT INTO items (id, project_id, prompt, prompt_hash, source, n_assigned, created_at) VALUES (1, 1, '[{"role": "user", "content": "How do I reset my password (0)?"}]', '08ba92b4d4e03ad941246ea696d7da0e768c04c222544988f71f4e8f6f12e03d', 'tickets.jsonl', 2, 1796229008.7702842);

INSERT INTO items (id, project_id, prompt, prompt_hash, source, n_assigned, created_at) VALUES (2, 1, '[{"role": "user", "content": "How do I reset my password (1)?"}]', 'af7d8e4200309870eab57386b23057da91677e51413fcb03dd126512c34fa9c3', 'tickets.jsonl', 1, 1796229008.7702842);

INSERT INTO items (id, project_id, prompt, prompt_hash, source, n_assigned, created_at) VALUES (3, 1, '[{"role": "user", "content": "How do I reset my password (2)?"}]', '23e6dbb19bfb230d00b54bba78fb6ce74c7d863ac9c77459e36bb5631158e7e7', 'tickets.jsonl', 0, 1796229008.7702842);

INSERT INTO items (id, project_id, prompt, prompt_hash, source, n_assigned, created_at) VALUES (4, 2, '[{"role": "user", "content": "Held-out question 0"}]', '8ba4029d50cee572b4e1a6359c0719d0e5b27a2fed4588816d3b12838f90d081', '', 0, 1796229010.072927);

INSERT INTO items (id, project_id, prompt, prompt_hash, source, n_assigned, created_at) VALUES (5, 2, '[{"role": "user", "content": "Held-out question 1"}]', '50c70acb4cded0eecaec761d1780245bbc457be2a9488f8e094e906c051c37ec', '', 0, 1796229010.072927);

SELECT setval(pg_get_serial_sequence('items', 'id'), (SELECT max(id) FROM items));

INSERT INTO jobs (id, project_id, kind, params, status, done, total, message, created_by, created_at, updated_at) VALUES (1, 1, 'generate', '{"n": 3}', 'done', 3, 3, 'ok', 1, 1796229010.0046349, 1796229010.0406637);

SELECT setval(pg_get_serial_sequence('jobs', 'id'), (SELECT max(id) FROM jobs));

INSERT INTO assignments (id, item_id, user_id, assigned_at) VALUES (1, 1, 2, 1760000000.0);

INSERT INTO assignments (id, item_id, user_id, assigned_at) VALUES (2, 1, 3, 1760000000.0);

INSERT INTO assignments (id, item_id, user_id, assigned_at) VALUES (3, 2, 2, 1760003660.0);

SELECT setval(pg_get_serial_sequence('assignments', 'id'), (SELECT max(id) FROM assignments));

INSERT INTO candidates (id, item_id, text, text_hash, model, generation, source, created_at, model_path, model_sha256) VALUES (1, 1, 'Answer 0: How do I reset my password (0)? Use the link.', '48a2ed0846601675f3f238d0a290833b3b20e5ac0a9dae593f9e4cd677cb0bc5', 'sft-0', '{"temperature": 0.7, "seed": 0}', 'generated', 1796229008.8307586, '/models/sft', 'abababababababababababababababababababababababababababababababab');

INSERT INTO candidates (id, item_id, text, text_hash, model, generation, source, created_at, model_path, model_sha256) VALUES (2, 1, 'Answer 1: How do I reset my password (0)? Use the link.', 'b5c5f8e40efa44de61616e66e7a780aa3ca305a1bf863fbdb0f1cb49f2078291', 'sft-1', '{"temperature": 0.7, "seed": 1}', 'generated', 1796229008.8307586, '/models/sft', 'abababababababababababababababababababababababababababababababab');

INSERT INTO candidates (id, item_id, text, text_hash, model, generation, source, created_at, model_path, model_sha256) VALUES (3, 1, 'Answer 2: How do I reset my password (0)? Use the link.', '709be4006141dd5abfffdc0b4e9436198836f15e4143b91319076863277bd72a', 'sft-0', '{"temperature": 0.7, "seed": 2}', 'generated', 1796229008.8307586, '/models/sft', 'abababababababababababababababababababababababababababababababab');

INSERT INTO candidates (id, item_id, text, text_hash, model, generation, source, created_at, model_path, model_sha256) VALUES (4, 2, 'Answer 0: How do I reset my password (1)? Use the link.', '45d3be70b7a659a26ca790fb0aa13ecb8c07fec502d0fb502733886dc7379137', 'sft-0', '{"temperature": 0.7, "seed": 0}', 'generated', 1796229008.956681, '/models/sft', 'abababababababababababababababababababababababababababababababab');

INSERT INTO candidates (id, item_id, text, text_hash, model, generation, source, created_at, model_path, model_sha256) VALUES (5, 2, 'Answer 1: How do I reset my password (1)? Use the link.', 'c6e51872e4da7c643743682e61c017d52a8d36097155e8e8bde173348f52456f', 'sft-1', '{"temperature": 0.7, "seed": 1}', 'generated', 1796229008.956681, '/models/sft', 'abababababababababababababababababababababababababababababababab');

INSERT INTO candidates (id, item_id, text, text_hash, model, generation, source, created_at, model_path, model_sha256) VALUES (6, 2, 'Answer 2: How do I reset my password (1)? Use the link.', 'b89747f714d069c335b9057c889798bfffa37bac4f11f54f3ff853df2c69eac5', 'sft-0', '{"temperature": 0.7, "seed": 2}', 'generated', 1796229008.956681, '/models/sft', 'abababababababababababababababababababababababababababababababab');

INSERT INTO candidates (id, item_id, text, text_hash, model, generation, source, created_at, model_path, model_sha256) VALUES (7, 3, 'Answer 0: How do I reset my password (2)? Use the link.', '6f7c4d61713ea7f17855a0d678f61c32c19089fd2a417bee3cec93d7f294b116', 'sft-0', '{"temperature": 0.7, "seed": 0}', 'generated', 1796229009.00061, '/models/sft', 'abababababababababababababababababababababababababababababababab');

INSERT INTO candidates (id, item_id, text, text_hash, model, generation, source, created_at, model_path, model_sha256) VALUES (8, 3, 'Answer 1: How do I reset my password (2)? Use the link.', 'ac9d4bed969b8bfbccf5265a497aef6c913ce899ddffe5265226d9f5939302b7', 'sft-1', '{"temperature": 0.7, "seed": 1}', 'generated', 1796229009.00061, '/models/sft', 'abababababababababababababababababababababababababababababababab');

INSERT INTO candidates (id, item_id, text, text_hash, model, generation, source, created_at, model_path, model_sha256) VALUES (9, 3, 'Answer 2: How do I reset my password (2)? Use the link.', '01f7f0def79e4a9d2cfa3bdd646c287411075fd20324e35f5663dceba80b2cc6', 'sft-0', '{"temperature": 0.7, "seed": 2}', 'generated', 1796229009.00061, '/models/sft', 'abababababababababababababababababababababababababababababababab');

INSERT INTO candidates (id, item_id, text, text_hash, model, generation, source, created_at, model_path, model_sha256) VALUES (10, 4, 'old answer 0', '661c3f4c3e9eaef43d5a0a1598f7cb2abe76fe75610be89a2108bd6699b6282f', 'sft-v1', '{}', 'generated', 1796229010.072927, '', '');

INSERT INTO candidates (id, item_id, text, text_hash, model, generation, source, created_at, model_path, model_sha256) VALUES (11, 4, 'new answer 0', '69038b90bfa216c32dd1963eb0d9642b420c03560e7f8024a137d8b382c3cf40', 'dpo-v2', '{}', 'generated', 1796229010.072927, '/models/dpo', 'abababababababababababababababababababababababababababababababab');

INSERT INTO candidates (id, item_id, text, text_hash, model, generation, source, created_at, model_path, model_sha256) VALUES (12, 5, 'old answer 1', '6c56c191bbba7888511b1e925a08cd56a7e5d5ef2a7889583fd8ee7fba7dbae1', 'sft-v1', '{}', 'generated', 1796229010.072927, '', '');

INSERT INTO candidates (id, item_id, text, text_hash, model, generation, source, created_at, model_path, model_sha256) VALUES (13, 5, 'new answer 1', '4891e68c222f7b09623150d22b055183a1e4ef66f6d2fc5642890aabaa881082', 'dpo-v2', '{}', 'generated', 1796229010.072927, '/models/dpo', 'abababababababababababababababababababababababababababababababab');

SELECT setval(pg_get_serial_sequence('candidates', 'id'), (SELECT max(id) FROM candidates));

INSERT INTO drafts (user_id, item_id, payload, updated_at) VALUES (3, 2, '{"ranks": {"1": 1}, "note": "half done"}', 1796229009.598596);

INSERT INTO gold_items (item_id, ordering, updated_at) VALUES (3, '[7, 8, 9]', 1796229009.8460011);

INSERT INTO judgments (id, item_id, user_id, created_at, payload, guideline_version, revision, submission_key) VALUES (1, 1, 2, 1796229009.259792, '{"ranks": {"1": 1, "2": 2, "3": 2}, "all_unacceptable": false, "tags": {"3": ["rude"]}, "correction_of": null, "correction": "", "negative": "", "note": ""}', 2, 1, 'ann-a-1');

INSERT INTO judgments (id, item_id, user_id, created_at, payload, guideline_version, revision, submission_key) VALUES (2, 1, 2, 1796229009.3063843, '{"ranks": {"1": 2, "2": 1, "3": 3}, "all_unacceptable": false, "tags": {}, "correction_of": 3, "correction": "Better.", "negative": "Never say this.", "note": "revised"}', 2, 2, 'ann-a-2');

INSERT INTO judgments (id, item_id, user_id, created_at, payload, guideline_version, revision, submission_key) VALUES (3, 1, 3, 1796229009.4494224, '{"ranks": {"1": 1, "2": 1, "3": 1}, "all_unacceptable": true, "tags": {}, "correction_of": null, "correction": "", "negative": "", "note": ""}', 2, 1, 'bob-b-1');

SELECT setval(pg_get_serial_sequence('judgments', 'id'), (SELECT max(id) FROM judgments));

INSERT INTO released_claims (id, item_id, user_id, assigned_at, released_at, reason) VALUES (1, 2, 3, 1760000000.0, 1760003660.0, 'expired');

SELECT setval(pg_get_serial_sequence('released_claims', 'id'), (SELECT max(id) FROM released_claims));

INSERT INTO candidate_scores (candidate_id, score, reward_model, weights_sha256, scored_at) VALUES (1, 0.0, '/models/rm', 'abababababababababababababababababababababababababababababababab', 1796229009.874397);

INSERT INTO candidate_scores (candidate_id, score, reward_model, weights_sha256, scored_at) VALUES (2, 0.1, '/models/rm', 'abababababababababababababababababababababababababababababababab', 1796229009.874397);

INSERT INTO candidate_scores (candidate_id, score, reward_model, weights_sha256, scored_at) VALUES (3, 0.2, '/models/rm', 'abababababababababababababababababababababababababababababababab', 1796229009.874397);

INSERT INTO candidate_scores (candidate_id, score, reward_model, weights_sha256, scored_at) VALUES (4, 0.3, '/models/rm', 'abababababababababababababababababababababababababababababababab', 1796229009.874397);

INSERT INTO candidate_scores (candidate_id, score, reward_model, weights_sha256, scored_at) VALUES (5, 0.4, '/models/rm', 'abababababababababababababababababababababababababababababababab', 1796229009.874397);

INSERT INTO candidate_scores (candidate_id, score, reward_model, weights_sha256, scored_at) VALUES (6, 0.5, '/models/rm', 'abababababababababababababababababababababababababababababababab', 1796229009.874397);

INSERT INTO candidate_scores (candidate_id, score, reward_model, weights_sha256, scored_at) VALUES (7, 0.6, '/models/rm', 'abababababababababababababababababababababababababababababababab', 1796229009.874397);

INSERT INTO candidate_scores (candidate_id, score, reward_model, weights_sha256, scored_at) VALUES (8, 0.7, '/models/rm', 'abababababababababababababababababababababababababababababababab', 1796229009.874397);

INSERT INTO candidate_scores (candidate_id, score, reward_model, weights_sha256, scored_at) VALUES (9, 0.8, '/models/rm', 'abababababababababababababababababababababababababababababababab', 1796229009.874397);
