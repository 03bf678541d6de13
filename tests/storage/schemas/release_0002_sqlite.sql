-- The schema `clusterchat db init` made on SQLite before versioning (revision 0002).

CREATE TABLE allgroup (
	id INTEGER NOT NULL, 
	groupname VARCHAR(50) NOT NULL, 
	groupdesc VARCHAR(200) DEFAULT '' NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (groupname)
);
CREATE TABLE friend (
	userid INTEGER NOT NULL, 
	friendid INTEGER NOT NULL, 
	PRIMARY KEY (userid, friendid)
);
CREATE TABLE groupuser (
	groupid INTEGER NOT NULL, 
	userid INTEGER NOT NULL, 
	grouprole VARCHAR(7) DEFAULT 'normal' NOT NULL, 
	PRIMARY KEY (groupid, userid)
);
CREATE INDEX ix_groupuser_userid ON groupuser (userid);
CREATE TABLE offlinemessage (
	id INTEGER NOT NULL, 
	userid INTEGER NOT NULL, 
	message TEXT NOT NULL, 
	PRIMARY KEY (id)
);
CREATE INDEX ix_offlinemessage_userid_id ON offlinemessage (userid, id);
CREATE TABLE user (
	id INTEGER NOT NULL, 
	name VARCHAR(50) NOT NULL, 
	password VARCHAR(255) NOT NULL, 
	state VARCHAR(7) DEFAULT 'offline' NOT NULL, 
	ticket VARCHAR(64), 
	PRIMARY KEY (id), 
	UNIQUE (name)
);
