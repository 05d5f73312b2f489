-- Backend.AI Manager 21.03.6 schema (what `mgr schema oneshot` creates, alembic head 8679d0a7e22b).
--
-- Deviation from the original DDL: columns whose default the Python app applied at INSERT
-- ("app" defaults) carry the same value as a server DEFAULT here, so an INSERT that omits
-- them stores what 21.03.6 would have stored. Rust code may still write them explicitly.
-- Related fixes: kernels.cluster_mode defaults to 'single-node' (the original server default
-- 'SINGLE_NODE' was never a value the app writes), session_templates.created_at defaults to
-- now() (the original had none), and ix_kernels_updated_order indexes the real columns
-- (the original compiled greatest() over string literals, so the index was useless).
-- Constraint and index names follow the original naming convention so that errors and
-- tooling refer to the same names.

CREATE EXTENSION IF NOT EXISTS "uuid-ossp";

-- Enum types. Label order follows the Python enum definitions and must not change:
-- PostgreSQL orders enum values by declaration.
-- kernelstatus, sessiontypes, sessionresult, agentstatus, defaultforunspecified and
-- templatetype store the Python member NAME; the others store the member VALUE.
CREATE TYPE kernelstatus AS ENUM (
    'PENDING', 'SCHEDULED', 'PREPARING', 'BUILDING', 'PULLING', 'RUNNING', 'RESTARTING',
    'RESIZING', 'SUSPENDED', 'TERMINATING', 'TERMINATED', 'ERROR', 'CANCELLED'
);
CREATE TYPE sessiontypes AS ENUM ('INTERACTIVE', 'BATCH');
CREATE TYPE sessionresult AS ENUM ('UNDEFINED', 'SUCCESS', 'FAILURE');
CREATE TYPE agentstatus AS ENUM ('ALIVE', 'LOST', 'RESTARTING', 'TERMINATED');
CREATE TYPE userrole AS ENUM ('superadmin', 'admin', 'user', 'monitor');
CREATE TYPE userstatus AS ENUM ('active', 'inactive', 'deleted', 'before-verification');
CREATE TYPE vfolderusagemode AS ENUM ('general', 'model', 'data');
CREATE TYPE vfolderpermission AS ENUM ('ro', 'rw', 'wd');
CREATE TYPE vfolderownershiptype AS ENUM ('user', 'group');
CREATE TYPE vfolderinvitationstate AS ENUM ('pending', 'canceled', 'accepted', 'rejected');
CREATE TYPE defaultforunspecified AS ENUM ('LIMITED', 'UNLIMITED');
CREATE TYPE templatetype AS ENUM ('TASK', 'CLUSTER');
CREATE TYPE errorlog_severity AS ENUM ('critical', 'error', 'warning');

-- dotfiles columns hold a msgpack-encoded list; '\x90' is msgpack's empty array.
CREATE TABLE domains (
    name                      VARCHAR(64)  NOT NULL,
    description               VARCHAR(512),
    is_active                 BOOLEAN      DEFAULT true,
    created_at                TIMESTAMPTZ  DEFAULT now(),
    modified_at               TIMESTAMPTZ  DEFAULT now(),
    total_resource_slots      JSONB        DEFAULT '{}'::jsonb,
    allowed_vfolder_hosts     VARCHAR[]    NOT NULL DEFAULT '{}',
    allowed_docker_registries VARCHAR[]    NOT NULL DEFAULT '{}',
    integration_id            VARCHAR(512),
    dotfiles                  BYTEA        NOT NULL DEFAULT '\x90'::bytea,
    CONSTRAINT pk_domains PRIMARY KEY (name)
);

CREATE TABLE users (
    uuid                 UUID         NOT NULL DEFAULT uuid_generate_v4(),
    username             VARCHAR(64),
    email                VARCHAR(64)  NOT NULL,
    password             VARCHAR,
    need_password_change BOOLEAN,
    full_name            VARCHAR(64),
    description          VARCHAR(500),
    status               userstatus   NOT NULL DEFAULT 'active',
    status_info          VARCHAR,
    created_at           TIMESTAMPTZ  DEFAULT now(),
    modified_at          TIMESTAMPTZ  DEFAULT now(),
    integration_id       VARCHAR(512),
    domain_name          VARCHAR(64),
    role                 userrole     DEFAULT 'user',
    CONSTRAINT pk_users PRIMARY KEY (uuid),
    CONSTRAINT uq_users_username UNIQUE (username),
    CONSTRAINT fk_users_domain_name_domains FOREIGN KEY (domain_name) REFERENCES domains (name)
);
-- The original declares email unique through a unique index, not a constraint.
CREATE UNIQUE INDEX ix_users_email ON users (email);
CREATE INDEX ix_users_domain_name ON users (domain_name);

CREATE TABLE groups (
    id                    UUID         NOT NULL DEFAULT uuid_generate_v4(),
    name                  VARCHAR(64)  NOT NULL,
    description           VARCHAR(512),
    is_active             BOOLEAN      DEFAULT true,
    created_at            TIMESTAMPTZ  DEFAULT now(),
    modified_at           TIMESTAMPTZ  DEFAULT now(),
    integration_id        VARCHAR(512),
    domain_name           VARCHAR(64)  NOT NULL,
    total_resource_slots  JSONB        DEFAULT '{}'::jsonb,
    allowed_vfolder_hosts VARCHAR[]    NOT NULL DEFAULT '{}',
    dotfiles              BYTEA        NOT NULL DEFAULT '\x90'::bytea,
    CONSTRAINT pk_groups PRIMARY KEY (id),
    CONSTRAINT uq_groups_name_domain_name UNIQUE (name, domain_name),
    CONSTRAINT fk_groups_domain_name_domains FOREIGN KEY (domain_name)
        REFERENCES domains (name) ON UPDATE CASCADE ON DELETE CASCADE
);
CREATE INDEX ix_groups_domain_name ON groups (domain_name);

CREATE TABLE association_groups_users (
    user_id  UUID NOT NULL,
    group_id UUID NOT NULL,
    CONSTRAINT uq_association_user_id_group_id UNIQUE (user_id, group_id),
    CONSTRAINT fk_association_groups_users_user_id_users FOREIGN KEY (user_id)
        REFERENCES users (uuid) ON UPDATE CASCADE ON DELETE CASCADE,
    CONSTRAINT fk_association_groups_users_group_id_groups FOREIGN KEY (group_id)
        REFERENCES groups (id) ON UPDATE CASCADE ON DELETE CASCADE
);

CREATE TABLE keypair_resource_policies (
    name                       VARCHAR(256)          NOT NULL,
    created_at                 TIMESTAMPTZ           DEFAULT now(),
    default_for_unspecified    defaultforunspecified NOT NULL DEFAULT 'LIMITED',
    total_resource_slots       JSONB                 NOT NULL,
    max_concurrent_sessions    INTEGER               NOT NULL,
    max_containers_per_session INTEGER               NOT NULL,
    max_vfolder_count          INTEGER               NOT NULL,
    max_vfolder_size           BIGINT                NOT NULL,
    idle_timeout               BIGINT                NOT NULL,
    allowed_vfolder_hosts      VARCHAR[]             NOT NULL,
    CONSTRAINT pk_keypair_resource_policies PRIMARY KEY (name)
);

-- keypairs.user_id is the owner's email (legacy string id); "user" is the owner's uuid.
CREATE TABLE keypairs (
    user_id          VARCHAR(256),
    access_key       VARCHAR(20)    NOT NULL,
    secret_key       VARCHAR(40),
    is_active        BOOLEAN,
    is_admin         BOOLEAN        DEFAULT false,
    created_at       TIMESTAMPTZ    DEFAULT now(),
    modified_at      TIMESTAMPTZ    DEFAULT now(),
    last_used        TIMESTAMPTZ,
    concurrency_used INTEGER,
    rate_limit       INTEGER,
    num_queries      INTEGER        DEFAULT 0,
    ssh_public_key   VARCHAR(750),
    ssh_private_key  VARCHAR(2000),
    "user"           UUID           NOT NULL,
    resource_policy  VARCHAR(256)   NOT NULL,
    dotfiles         BYTEA          NOT NULL DEFAULT '\x90'::bytea,
    bootstrap_script VARCHAR(65536) NOT NULL DEFAULT '',
    CONSTRAINT pk_keypairs PRIMARY KEY (access_key),
    CONSTRAINT fk_keypairs_user_users FOREIGN KEY ("user") REFERENCES users (uuid),
    CONSTRAINT fk_keypairs_resource_policy_keypair_resource_policies FOREIGN KEY (resource_policy)
        REFERENCES keypair_resource_policies (name)
);
CREATE INDEX ix_keypairs_user_id ON keypairs (user_id);
CREATE INDEX ix_keypairs_is_active ON keypairs (is_active);
CREATE INDEX ix_keypairs_is_admin ON keypairs (is_admin);

CREATE TABLE scaling_groups (
    name           VARCHAR(64)  NOT NULL,
    description    VARCHAR(512),
    is_active      BOOLEAN      DEFAULT true,
    created_at     TIMESTAMPTZ  DEFAULT now(),
    driver         VARCHAR(64)  NOT NULL,
    driver_opts    JSONB        NOT NULL DEFAULT '{}'::jsonb,
    scheduler      VARCHAR(64)  NOT NULL,
    scheduler_opts JSONB        NOT NULL DEFAULT '{}'::jsonb,
    CONSTRAINT pk_scaling_groups PRIMARY KEY (name)
);
CREATE INDEX ix_scaling_groups_is_active ON scaling_groups (is_active);

CREATE TABLE sgroups_for_domains (
    scaling_group VARCHAR(64) NOT NULL,
    domain        VARCHAR(64) NOT NULL,
    CONSTRAINT uq_sgroup_domain UNIQUE (scaling_group, domain),
    CONSTRAINT fk_sgroups_for_domains_scaling_group_scaling_groups FOREIGN KEY (scaling_group)
        REFERENCES scaling_groups (name) ON UPDATE CASCADE ON DELETE CASCADE,
    CONSTRAINT fk_sgroups_for_domains_domain_domains FOREIGN KEY (domain)
        REFERENCES domains (name) ON UPDATE CASCADE ON DELETE CASCADE
);
CREATE INDEX ix_sgroups_for_domains_scaling_group ON sgroups_for_domains (scaling_group);
CREATE INDEX ix_sgroups_for_domains_domain ON sgroups_for_domains (domain);

CREATE TABLE sgroups_for_groups (
    scaling_group VARCHAR(64) NOT NULL,
    "group"       UUID        NOT NULL,
    CONSTRAINT uq_sgroup_ugroup UNIQUE (scaling_group, "group"),
    CONSTRAINT fk_sgroups_for_groups_scaling_group_scaling_groups FOREIGN KEY (scaling_group)
        REFERENCES scaling_groups (name) ON UPDATE CASCADE ON DELETE CASCADE,
    CONSTRAINT fk_sgroups_for_groups_group_groups FOREIGN KEY ("group")
        REFERENCES groups (id) ON UPDATE CASCADE ON DELETE CASCADE
);
CREATE INDEX ix_sgroups_for_groups_scaling_group ON sgroups_for_groups (scaling_group);
CREATE INDEX ix_sgroups_for_groups_group ON sgroups_for_groups ("group");

CREATE TABLE sgroups_for_keypairs (
    scaling_group VARCHAR(64) NOT NULL,
    access_key    VARCHAR(20) NOT NULL,
    CONSTRAINT uq_sgroup_akey UNIQUE (scaling_group, access_key),
    CONSTRAINT fk_sgroups_for_keypairs_scaling_group_scaling_groups FOREIGN KEY (scaling_group)
        REFERENCES scaling_groups (name) ON UPDATE CASCADE ON DELETE CASCADE,
    CONSTRAINT fk_sgroups_for_keypairs_access_key_keypairs FOREIGN KEY (access_key)
        REFERENCES keypairs (access_key) ON UPDATE CASCADE ON DELETE CASCADE
);
CREATE INDEX ix_sgroups_for_keypairs_scaling_group ON sgroups_for_keypairs (scaling_group);
CREATE INDEX ix_sgroups_for_keypairs_access_key ON sgroups_for_keypairs (access_key);

CREATE TABLE agents (
    id              VARCHAR(64)  NOT NULL,
    status          agentstatus  NOT NULL DEFAULT 'ALIVE',
    status_changed  TIMESTAMPTZ,
    region          VARCHAR(64)  NOT NULL,
    scaling_group   VARCHAR(64)  NOT NULL DEFAULT 'default',
    schedulable     BOOLEAN      NOT NULL DEFAULT true,
    available_slots JSONB        NOT NULL,
    occupied_slots  JSONB        NOT NULL,
    addr            VARCHAR(128) NOT NULL,
    first_contact   TIMESTAMPTZ  DEFAULT now(),
    lost_at         TIMESTAMPTZ,
    version         VARCHAR(64)  NOT NULL,
    compute_plugins JSONB        NOT NULL DEFAULT '{}'::jsonb,
    CONSTRAINT pk_agents PRIMARY KEY (id),
    CONSTRAINT fk_agents_scaling_group_scaling_groups FOREIGN KEY (scaling_group)
        REFERENCES scaling_groups (name)
);
CREATE INDEX ix_agents_status ON agents (status);
CREATE INDEX ix_agents_region ON agents (region);
CREATE INDEX ix_agents_scaling_group ON agents (scaling_group);

-- One row per container. A session is the set of rows sharing session_id; its main kernel
-- has cluster_role = 'main' and id = session_id.
CREATE TABLE kernels (
    id                  UUID          NOT NULL DEFAULT uuid_generate_v4(),
    session_id          UUID          NOT NULL,
    session_creation_id VARCHAR(32),
    session_name        VARCHAR(64),
    session_type        sessiontypes  NOT NULL DEFAULT 'INTERACTIVE',
    -- Holds ClusterMode values ('single-node' / 'multi-node'); not a PG enum in the original.
    cluster_mode        VARCHAR(16)   NOT NULL DEFAULT 'single-node',
    cluster_size        INTEGER       NOT NULL DEFAULT 1,
    cluster_role        VARCHAR(16)   NOT NULL DEFAULT 'main',
    cluster_idx         INTEGER       NOT NULL DEFAULT 0,
    -- The original derives the hostname from role + idx at INSERT; a column default cannot
    -- read other columns, so this is the value the enqueue path writes for a single-node
    -- session ('main1'). Write it explicitly whenever role or idx is not the default.
    cluster_hostname    VARCHAR(64)   NOT NULL DEFAULT 'main1',
    scaling_group       VARCHAR(64),
    agent               VARCHAR(64),
    agent_addr          VARCHAR(128),
    domain_name         VARCHAR(64)   NOT NULL,
    group_id            UUID          NOT NULL,
    user_uuid           UUID          NOT NULL,
    access_key          VARCHAR(20),
    image               VARCHAR(512),
    registry            VARCHAR(512),
    tag                 VARCHAR(64),
    container_id        VARCHAR(64),
    occupied_slots      JSONB         NOT NULL,
    occupied_shares     JSONB         NOT NULL DEFAULT '{}'::jsonb,
    environ             VARCHAR[],
    -- Written as a 2-D array: one [name, host, host_path, perm, unmanaged_path] row per mount.
    mounts              VARCHAR[],
    mount_map           JSONB         DEFAULT '{}'::jsonb,
    attached_devices    JSONB         DEFAULT '{}'::jsonb,
    resource_opts       JSONB         DEFAULT '{}'::jsonb,
    bootstrap_script    VARCHAR(16384),
    kernel_host         VARCHAR(128),
    repl_in_port        INTEGER       NOT NULL,
    repl_out_port       INTEGER       NOT NULL,
    stdin_port          INTEGER       NOT NULL,
    stdout_port         INTEGER       NOT NULL,
    service_ports       JSONB,
    preopen_ports       INTEGER[],
    created_at          TIMESTAMPTZ   DEFAULT now(),
    terminated_at       TIMESTAMPTZ,
    starts_at           TIMESTAMPTZ,
    status              kernelstatus  NOT NULL DEFAULT 'PENDING',
    status_changed      TIMESTAMPTZ,
    status_info         VARCHAR,
    status_data         JSONB,
    startup_command     TEXT,
    result              sessionresult NOT NULL DEFAULT 'UNDEFINED',
    internal_data       JSONB,
    container_log       BYTEA,
    num_queries         BIGINT        DEFAULT 0,
    last_stat           JSONB,
    CONSTRAINT pk_kernels PRIMARY KEY (id),
    CONSTRAINT fk_kernels_scaling_group_scaling_groups FOREIGN KEY (scaling_group)
        REFERENCES scaling_groups (name),
    CONSTRAINT fk_kernels_agent_agents FOREIGN KEY (agent) REFERENCES agents (id),
    CONSTRAINT fk_kernels_domain_name_domains FOREIGN KEY (domain_name) REFERENCES domains (name),
    CONSTRAINT fk_kernels_group_id_groups FOREIGN KEY (group_id) REFERENCES groups (id),
    CONSTRAINT fk_kernels_user_uuid_users FOREIGN KEY (user_uuid) REFERENCES users (uuid),
    CONSTRAINT fk_kernels_access_key_keypairs FOREIGN KEY (access_key)
        REFERENCES keypairs (access_key)
);
CREATE INDEX ix_kernels_session_id ON kernels (session_id);
CREATE INDEX ix_kernels_session_name ON kernels (session_name);
CREATE INDEX ix_kernels_session_type ON kernels (session_type);
CREATE INDEX ix_kernels_cluster_role ON kernels (cluster_role);
CREATE INDEX ix_kernels_scaling_group ON kernels (scaling_group);
CREATE INDEX ix_kernels_created_at ON kernels (created_at);
CREATE INDEX ix_kernels_terminated_at ON kernels (terminated_at);
CREATE INDEX ix_kernels_status ON kernels (status);
CREATE INDEX ix_kernels_status_changed ON kernels (status_changed);
CREATE INDEX ix_kernels_result ON kernels (result);
CREATE INDEX ix_kernels_sess_id_role ON kernels (session_id, cluster_role);
CREATE INDEX ix_kernels_status_role ON kernels (status, cluster_role);
CREATE INDEX ix_kernels_updated_order ON kernels (greatest(created_at, terminated_at, status_changed));
-- Session names are unique per keypair among sessions that are not finished.
CREATE UNIQUE INDEX ix_kernels_unique_sess_token ON kernels (access_key, session_name)
    WHERE status NOT IN ('TERMINATED', 'CANCELLED') AND cluster_role = 'main';

CREATE TABLE session_dependencies (
    session_id UUID NOT NULL,
    depends_on UUID NOT NULL,
    CONSTRAINT pk_session_dependencies PRIMARY KEY (session_id, depends_on),
    CONSTRAINT fk_session_dependencies_session_id_kernels FOREIGN KEY (session_id)
        REFERENCES kernels (id) ON UPDATE CASCADE ON DELETE CASCADE,
    CONSTRAINT fk_session_dependencies_depends_on_kernels FOREIGN KEY (depends_on)
        REFERENCES kernels (id) ON UPDATE CASCADE ON DELETE CASCADE
);
CREATE INDEX ix_session_dependencies_session_id ON session_dependencies (session_id);
CREATE INDEX ix_session_dependencies_depends_on ON session_dependencies (depends_on);

-- max_size and cur_size are in KiB. host is '' for unmanaged folders.
CREATE TABLE vfolders (
    id             UUID                 NOT NULL DEFAULT uuid_generate_v4(),
    host           VARCHAR(128)         NOT NULL,
    name           VARCHAR(64)          NOT NULL,
    usage_mode     vfolderusagemode     NOT NULL DEFAULT 'general',
    permission     vfolderpermission    DEFAULT 'rw',
    max_files      INTEGER              DEFAULT 1000,
    max_size       INTEGER              DEFAULT 1048576,
    num_files      INTEGER              DEFAULT 0,
    cur_size       INTEGER              DEFAULT 0,
    created_at     TIMESTAMPTZ          DEFAULT now(),
    last_used      TIMESTAMPTZ,
    creator        VARCHAR(128),
    unmanaged_path VARCHAR(512),
    ownership_type vfolderownershiptype NOT NULL DEFAULT 'user',
    "user"         UUID,
    "group"        UUID,
    cloneable      BOOLEAN              NOT NULL DEFAULT false,
    CONSTRAINT pk_vfolders PRIMARY KEY (id),
    CONSTRAINT fk_vfolders_user_users FOREIGN KEY ("user") REFERENCES users (uuid),
    CONSTRAINT fk_vfolders_group_groups FOREIGN KEY ("group") REFERENCES groups (id),
    CONSTRAINT ck_vfolders_ownership_type_match_with_user_or_group CHECK (
        (ownership_type = 'user' AND "user" IS NOT NULL)
        OR (ownership_type = 'group' AND "group" IS NOT NULL)
    ),
    CONSTRAINT ck_vfolders_either_one_of_user_or_group CHECK (
        ("user" IS NULL AND "group" IS NOT NULL)
        OR ("user" IS NOT NULL AND "group" IS NULL)
    )
);
CREATE INDEX ix_vfolders_name ON vfolders (name);

-- No PK or unique constraint in the original.
CREATE TABLE vfolder_permissions (
    permission vfolderpermission DEFAULT 'rw',
    vfolder    UUID NOT NULL,
    "user"     UUID NOT NULL,
    CONSTRAINT fk_vfolder_permissions_vfolder_vfolders FOREIGN KEY (vfolder)
        REFERENCES vfolders (id) ON UPDATE CASCADE ON DELETE CASCADE,
    CONSTRAINT fk_vfolder_permissions_user_users FOREIGN KEY ("user") REFERENCES users (uuid)
);

CREATE TABLE vfolder_invitations (
    id          UUID                   NOT NULL DEFAULT uuid_generate_v4(),
    permission  vfolderpermission      DEFAULT 'rw',
    inviter     VARCHAR(256),
    invitee     VARCHAR(256)           NOT NULL,
    state       vfolderinvitationstate DEFAULT 'pending',
    created_at  TIMESTAMPTZ            DEFAULT now(),
    -- NULL until the first update, as in the original.
    modified_at TIMESTAMPTZ,
    vfolder     UUID                   NOT NULL,
    CONSTRAINT pk_vfolder_invitations PRIMARY KEY (id),
    CONSTRAINT fk_vfolder_invitations_vfolder_vfolders FOREIGN KEY (vfolder)
        REFERENCES vfolders (id) ON UPDATE CASCADE ON DELETE CASCADE
);

CREATE TABLE vfolder_attachment (
    vfolder UUID NOT NULL,
    kernel  UUID NOT NULL,
    CONSTRAINT pk_vfolder_attachment PRIMARY KEY (vfolder, kernel),
    CONSTRAINT fk_vfolder_attachment_vfolder_vfolders FOREIGN KEY (vfolder)
        REFERENCES vfolders (id) ON UPDATE CASCADE ON DELETE CASCADE,
    CONSTRAINT fk_vfolder_attachment_kernel_kernels FOREIGN KEY (kernel)
        REFERENCES kernels (id) ON UPDATE CASCADE ON DELETE CASCADE
);

CREATE TABLE resource_presets (
    name           VARCHAR(256) NOT NULL,
    resource_slots JSONB        NOT NULL,
    shared_memory  BIGINT,
    CONSTRAINT pk_resource_presets PRIMARY KEY (name)
);

CREATE TABLE session_templates (
    id          UUID         NOT NULL DEFAULT uuid_generate_v4(),
    created_at  TIMESTAMPTZ  DEFAULT now(),
    is_active   BOOLEAN      DEFAULT true,
    domain_name VARCHAR(64)  NOT NULL,
    group_id    UUID,
    user_uuid   UUID         NOT NULL,
    type        templatetype NOT NULL DEFAULT 'TASK',
    name        VARCHAR(128),
    template    JSONB        NOT NULL,
    CONSTRAINT pk_session_templates PRIMARY KEY (id),
    CONSTRAINT fk_session_templates_domain_name_domains FOREIGN KEY (domain_name)
        REFERENCES domains (name),
    CONSTRAINT fk_session_templates_group_id_groups FOREIGN KEY (group_id) REFERENCES groups (id),
    CONSTRAINT fk_session_templates_user_uuid_users FOREIGN KEY (user_uuid) REFERENCES users (uuid)
);
CREATE INDEX ix_session_templates_created_at ON session_templates (created_at);
CREATE INDEX ix_session_templates_user_uuid ON session_templates (user_uuid);
CREATE INDEX ix_session_templates_type ON session_templates (type);

CREATE TABLE error_logs (
    id             UUID              NOT NULL DEFAULT uuid_generate_v4(),
    created_at     TIMESTAMPTZ       DEFAULT now(),
    severity       errorlog_severity,
    source         VARCHAR,
    "user"         UUID,
    is_read        BOOLEAN           DEFAULT false,
    is_cleared     BOOLEAN           DEFAULT false,
    message        TEXT,
    context_lang   VARCHAR,
    context_env    JSONB,
    request_url    VARCHAR,
    request_status INTEGER,
    traceback      TEXT,
    CONSTRAINT pk_error_logs PRIMARY KEY (id),
    CONSTRAINT fk_error_logs_user_users FOREIGN KEY ("user") REFERENCES users (uuid)
);
CREATE INDEX ix_error_logs_created_at ON error_logs (created_at);
CREATE INDEX ix_error_logs_severity ON error_logs (severity);
CREATE INDEX ix_error_logs_user ON error_logs ("user");
CREATE INDEX ix_error_logs_is_read ON error_logs (is_read);
CREATE INDEX ix_error_logs_is_cleared ON error_logs (is_cleared);
