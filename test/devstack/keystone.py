#!/usr/bin/python3
"""Keystone side of devstack's user and role functions, over the test cloud (test/cloud).

Run with Debian's /usr/bin/python3 (keystoneclient comes with the cloud's packages) by
functions.sh, which gives devstack's get_or_create_* functions their devstack meaning. Admin
credentials come from the environment (GSC_KEYSTONE_URL, GSC_ADMIN_PASSWORD, GSC_REGION), as
test/cloud/keystone_setup.py takes them. Users, roles and projects may be named by name or id.

  keystone.py user NAME PASSWORD DOMAIN            get or create a user (an existing user keeps
                                                   its password, as with `openstack user create
                                                   --or-show`); prints its id
  keystone.py role NAME                            get or create a role; prints its id
  keystone.py grant ROLE USER PROJECT [UDOM PDOM]  give USER the ROLE on PROJECT unless it has it;
                                                   prints the role's id
  keystone.py has-grant ROLE USER PROJECT [UDOM PDOM]
                                                   exit 0 when USER has ROLE on PROJECT, 1 if not
  keystone.py delete-user NAME DOMAIN              delete the user when it exists
"""

import os
import re
import sys

from keystoneauth1 import exceptions as ks_exc

# The test cloud's own Keystone setup script holds the admin client (and env). Importing it
# must leave no __pycache__ in the source tree.
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "cloud"))
import keystone_setup  # noqa: E402

ID = re.compile(r"^[0-9a-f]{32}$")


def client():
    return keystone_setup.admin_client()


def find(manager, ref, **filters):
    """The object named or identified by ref, or None."""
    if ID.match(ref):
        try:
            return manager.get(ref)
        except ks_exc.NotFound:
            pass
    for obj in manager.list(name=ref, **filters):
        if obj.name == ref:
            return obj
    return None


def must_find(manager, ref, what, **filters):
    obj = find(manager, ref, **filters)
    if obj is None:
        sys.exit("keystone.py: no %s %s" % (what, ref))
    return obj


def domain(ks, ref):
    return must_find(ks.domains, ref, "domain")


def grant_args(ks, argv):
    role_ref, user_ref, project_ref = argv[:3]
    user_domain = domain(ks, argv[3] if len(argv) > 3 and argv[3] else "default")
    project_domain = domain(ks, argv[4] if len(argv) > 4 and argv[4] else "default")
    role = must_find(ks.roles, role_ref, "role")
    user = must_find(ks.users, user_ref, "user", domain=user_domain)
    project = must_find(ks.projects, project_ref, "project", domain=project_domain)
    return role, user, project


def main(argv):
    if not argv:
        sys.exit(__doc__)
    cmd, args = argv[0], argv[1:]
    ks = client()
    if cmd == "user" and len(args) == 3:
        name, password, dom = args
        d = domain(ks, dom)
        u = find(ks.users, name, domain=d)
        if u is None:
            u = ks.users.create(name, domain=d, password=password)
        print(u.id)
    elif cmd == "role" and len(args) == 1:
        r = find(ks.roles, args[0])
        if r is None:
            r = ks.roles.create(args[0])
        print(r.id)
    elif cmd in ("grant", "has-grant") and len(args) in (3, 5):
        role, user, project = grant_args(ks, args)
        have = ks.role_assignments.list(user=user, project=project, role=role)
        if cmd == "has-grant":
            return 0 if have else 1
        if not have:
            ks.roles.grant(role, user=user, project=project)
        print(role.id)
    elif cmd == "delete-user" and len(args) == 2:
        u = find(ks.users, args[0], domain=domain(ks, args[1]))
        if u is not None:
            ks.users.delete(u)
    else:
        sys.exit(__doc__)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
