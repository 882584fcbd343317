module ioconnect.test/goref

go 1.19
