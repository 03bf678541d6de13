-- The original C++ system's tables, as its chat.sql makes them (see
-- /work/shared/reference/original-system.md): latin1-era defaults, plaintext
-- passwords of at most 50 characters, offline messages without an order.
CREATE TABLE user (
  id INT PRIMARY KEY AUTO_INCREMENT,
  name VARCHAR(50) NOT NULL UNIQUE,
  password VARCHAR(50) NOT NULL,
  state ENUM('online','offline') DEFAULT 'offline'
) ENGINE=InnoDB DEFAULT CHARSET=latin1;
CREATE TABLE friend (
  userid INT NOT NULL,
  friendid INT NOT NULL,
  PRIMARY KEY (userid, friendid)
) ENGINE=InnoDB DEFAULT CHARSET=latin1;
CREATE TABLE allgroup (
  id INT PRIMARY KEY AUTO_INCREMENT,
  groupname VARCHAR(50) NOT NULL UNIQUE,
  groupdesc VARCHAR(200) DEFAULT ''
) ENGINE=InnoDB DEFAULT CHARSET=latin1;
CREATE TABLE groupuser (
  groupid INT NOT NULL,
  userid INT NOT NULL,
  grouprole ENUM('creator','normal') DEFAULT 'normal',
  PRIMARY KEY (groupid, userid)
) ENGINE=InnoDB DEFAULT CHARSET=latin1;
CREATE TABLE offlinemessage (
  userid INT NOT NULL,
  message VARCHAR(500) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=latin1;
