#!/usr/bin/python3
"""Creates the test cloud's projects, users, roles and image catalog entry in Keystone.

Run by up.sh with Debian's /usr/bin/python3 after `keystone-manage bootstrap` (which made the
admin user and project, the admin/member/reader roles, region and identity endpoints). Every step
is get-or-create, so running it again changes nothing. Settings come from the environment (see
up.sh); nothing is printed except one line per object created or changed.
"""

import os
import sys

from keystoneauth1 import session as ks_session
from keystoneauth1.identity import v3
from keystoneclient.v3 import client as ks_client


def env(name):
    value = os.environ.get(name)
    if not value:
        sys.exit("keystone_setup: %s is not set" % name)
    return value


def find(manager, name, **filters):
    for obj in manager.list(name=name, **filters):
        if obj.name == name:
            return obj
    return None


def admin_client():
    """A keystoneclient of the test cloud's admin, from GSC_KEYSTONE_URL, GSC_ADMIN_PASSWORD
    and GSC_REGION."""
    auth = v3.Password(
        auth_url=env("GSC_KEYSTONE_URL"),
        username="admin",
        password=env("GSC_ADMIN_PASSWORD"),
        project_name="admin",
        user_domain_id="default",
        project_domain_id="default",
    )
    sess = ks_session.Session(auth=auth, timeout=60)
    return ks_client.Client(session=sess, interface="public", region_name=env("GSC_REGION"))


def main():
    ks = admin_client()
    region = env("GSC_REGION")
    domain = "default"

    def project(name, description):
        p = find(ks.projects, name, domain=domain)
        if p is None:
            p = ks.projects.create(name, domain, description=description)
            print("created project %s" % name)
        return p

    def user(name, password, default_project, description):
        u = find(ks.users, name, domain=domain)
        if u is None:
            u = ks.users.create(name, domain=domain, password=password,
                                default_project=default_project,
                                description=description)
            print("created user %s" % name)
        else:
            # Passwords are fixed: make sure the stored one is ours.
            ks.users.update(u, password=password)
        return u

    def role(name):
        r = find(ks.roles, name)
        if r is None:
            r = ks.roles.create(name)
            print("created role %s" % name)
        return r

    def grant(role_name, u, p):
        r = role(role_name)
        have = ks.role_assignments.list(user=u, project=p, role=r)
        if not have:
            ks.roles.grant(r, user=u, project=p)
            print("granted %s to %s on %s" % (role_name, u.name, p.name))

    service = project("service", "Service users of the glance-sidecar test cloud")
    demo = project("demo", "A non-admin project")

    glance = user("glance", env("GSC_GLANCE_PASSWORD"), service,
                  "Glance's keystonemiddleware user")
    grant("admin", glance, service)

    # The sidecar reads, downloads and PATCHes every project's images, creates images owned by
    # other projects and deactivates images: with Glance's default policies that needs the admin
    # role (context_is_admin).
    sidecar = user("glance-sidecar", env("GSC_SIDECAR_PASSWORD"), service,
                   "glance-sidecar's service user")
    grant("admin", sidecar, service)

    demo_user = user("demo", env("GSC_DEMO_PASSWORD"), demo, "A non-admin user")
    grant("member", demo_user, demo)

    svc = None
    for s in ks.services.list(type="image"):
        svc = s
        break
    if svc is None:
        svc = ks.services.create("glance", type="image",
                                 description="OpenStack Image service")
        print("created service glance (image)")
    url = env("GSC_GLANCE_URL")
    for iface in ("public", "internal", "admin"):
        eps = ks.endpoints.list(service=svc, interface=iface, region=region)
        if not eps:
            ks.endpoints.create(svc, url, interface=iface, region=region)
            print("created %s image endpoint %s" % (iface, url))
        else:
            for ep in eps:
                if ep.url != url:
                    ks.endpoints.update(ep, url=url)
                    print("updated %s image endpoint to %s" % (iface, url))


if __name__ == "__main__":
    main()
