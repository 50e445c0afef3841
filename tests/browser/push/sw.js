// The service worker of the test page's origin, as a page on another origin
// than Herald's has one: it imports Herald's from Herald. The notification's
// title and body come from this script's query (`title=`, `body=`, read by
// herald-sw.js), the rest from `self.heraldPush`.
const herald = new URL(self.location.href).searchParams.get("herald");
self.heraldPush = { url: "/page.html?clicked" };
importScripts(`${herald}/herald-sw.js`);
