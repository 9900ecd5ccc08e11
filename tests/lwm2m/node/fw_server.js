// An lwm2m-node-lib SERVER that updates the firmware of the first client to register: it reads
// Object 3 (3/0/0..3) and Object 5's State and Update Result (5/0/3, 5/0/5), observes State,
// writes the Package URI (5/0/1), executes Update (5/0/2) once State is Downloaded (2), and
// reads the Update Result when State is Idle again (OMA LwM2M Core, Appendix E.6).
//
// usage: node fw_server.js PORT PACKAGE_URI
// Prints one JSON object per line to stdout: what it did and what it saw ("listening",
// "registered", "read", "notify", "written", "executed", "result", "deregistered", "error").
'use strict';

var lwm2m = require('lwm2m-node-lib').server;

var args = process.argv.slice(2);
if (args.length < 2) {
    console.error('usage: node fw_server.js PORT PACKAGE_URI');
    process.exit(2);
}
var port = Number(args[0]), packageUri = args[1];
var updating = null, executed = false, finished = false;

function say(doc) {
    process.stdout.write(JSON.stringify(doc) + '\n');
}

function failed(what) {
    return function (error) {
        if (error) {
            say({event: 'error', what: what, error: String(error && (error.message || error.name || error))});
            return true;
        }
        return false;
    };
}

function readAll(id, paths, done) {
    if (!paths.length) {
        return done();
    }
    var p = paths[0].split('/');
    lwm2m.read(id, p[1], p[2], p[3], function (error, value) {
        if (!failed('read ' + paths[0])(error)) {
            say({event: 'read', path: paths[0], value: value});
        }
        readAll(id, paths.slice(1), done);
    });
}

function onState(id, value) {
    say({event: 'notify', path: '/5/0/3', value: value});
    if (value === '2' && !executed) {
        executed = true;
        lwm2m.execute(id, '5', '0', '2', '', function (error) {
            if (!failed('execute /5/0/2')(error)) {
                say({event: 'executed', path: '/5/0/2'});
            }
        });
    } else if (value === '0' && executed && !finished) {
        finished = true;
        readAll(id, ['/5/0/5', '/3/0/3'], function () {
            say({event: 'result'});
        });
    }
}

function update(endpoint) {
    lwm2m.getDevice(endpoint, function (error, device) {
        if (failed('getDevice')(error)) {
            return;
        }
        var id = device.id;
        readAll(id, ['/3/0/0', '/3/0/1', '/3/0/2', '/3/0/3', '/5/0/3', '/5/0/5', '/5/0/9'],
            function () {
                lwm2m.observe(id, '5', '0', '3', function (value) {
                    onState(id, String(value));
                }, function (error, first) {
                    if (failed('observe /5/0/3')(error)) {
                        return;
                    }
                    say({event: 'observed', path: '/5/0/3', value: first});
                    lwm2m.write(id, '5', '0', '1', packageUri, function (error) {
                        if (!failed('write /5/0/1')(error)) {
                            say({event: 'written', path: '/5/0/1', value: packageUri});
                        }
                    });
                });
            });
    });
}

lwm2m.start({
    port: port, lifetimeCheckInterval: 1000, udpWindow: 100, defaultType: 'Device',
    logLevel: 'FATAL', ipProtocol: 'udp4', serverProtocol: 'udp4', types: [],
    formats: [{name: 'lightweightm2m/text', value: 1541}], writeFormat: 'lightweightm2m/text'
}, function (error, serverInfo) {
    if (error) {
        say({event: 'error', what: 'start', error: String(error)});
        process.exit(1);
    }
    lwm2m.setHandler(serverInfo, 'registration',
        function (endpoint, lifetime, version, binding, payload, callback) {
            say({event: 'registered', endpoint: endpoint, lifetime: lifetime, version: version,
                 binding: binding, payload: payload});
            callback();
            if (updating === null) {
                updating = endpoint;
                setTimeout(function () { update(endpoint); }, 200);
            }
        });
    lwm2m.setHandler(serverInfo, 'updateRegistration', function (object, payload, callback) {
        say({event: 'updated'});
        callback();
    });
    lwm2m.setHandler(serverInfo, 'unregistration', function (device, callback) {
        say({event: 'deregistered', endpoint: device && device.name});
        callback();
    });
    say({event: 'listening', port: port});
});

process.on('SIGTERM', function () { process.exit(0); });
